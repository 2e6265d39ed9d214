"""The folder scan in forked child processes gives what one process gives, whatever happens to a child, and
reads headers without importing numpy (the command line imports it meanwhile)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from medsynth.io.dicom import scan as scan_module
from medsynth.io.dicom.scan import DicomScan, scan_folder, scan_processes
from tests.conftest import shared

CORPUS = shared("dicom")  # every shared DICOM folder: classic, enhanced, mosaics, compressed, bad files


def _comparable(scan: DicomScan) -> tuple:
    return (scan.series, scan.segs, [q.__dict__ for q in scan.quarantine], scan.nifti,
            {p: (h.raw, h.private, h.pixel_offset, h.pixel_length) for p, h in scan.headers.items()})


@pytest.fixture(scope="module")
def one_process() -> DicomScan:
    return scan_folder(CORPUS, workers=1)


@pytest.fixture
def forks(monkeypatch) -> list[int]:
    calls: list[int] = []
    real_fork = os.fork

    def counting_fork() -> int:
        calls.append(1)
        return real_fork()

    monkeypatch.setattr(scan_module.os, "fork", counting_fork)
    return calls


def test_the_forked_scan_gives_what_one_process_gives(one_process, forks):
    assert len(one_process.series) > 20 and one_process.quarantine and one_process.headers
    assert _comparable(scan_folder(CORPUS, workers=3)) == _comparable(one_process)
    assert len(forks) == 3


def test_a_child_that_fails_leaves_its_share_to_the_caller(one_process, forks, monkeypatch):
    parent = os.getpid()
    classify = scan_module._classify

    def failing_in_children(path, max_voxels):
        if os.getpid() != parent:
            raise RuntimeError("a child cut short")
        return classify(path, max_voxels)

    monkeypatch.setattr(scan_module, "_classify", failing_in_children)
    assert _comparable(scan_folder(CORPUS, workers=2)) == _comparable(one_process)
    assert len(forks) == 2


def test_no_child_is_forked_beside_a_running_thread(forks):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        scan_folder(shared("dicom", "dcm_qa_12bit", "In"), workers=2)
    finally:
        stop.set()
        thread.join()
    assert forks == []


@pytest.mark.parametrize(("n_files", "workers", "want"), [
    (150, None, 0),  # few files: read here
    (605, None, min(os.cpu_count() or 1, 4)),  # one child per 200 files, at most one per core
    (10, 3, 3),  # --workers N: N children
    (5000, 1, 0),  # --workers 1: one process
])
def test_scan_processes(n_files, workers, want):
    assert scan_processes(n_files, workers) == want


def test_the_scan_reads_headers_without_numpy():
    code = ("import sys; from medsynth.io.dicom.scan import scan_folder; scan = scan_folder(sys.argv[1], workers=2); "
            "print(len(scan.series), len(scan.headers), 'numpy' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, str(shared("dicom", "dcm_qa_nih", "In", "20180918GE"))],
                         capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["4", "600", "False"], res.stdout + res.stderr
