"""Conversion with a process pool: the scan runs in the parent, workers forked after it inherit its
headers (a job carries none), and the volumes equal those of a one-process run."""

from __future__ import annotations

import shutil

import numpy as np

from medsynth.io import convert
from medsynth.io.convert import ConvertedVolume, iter_volumes
from medsynth.io.pool import fork_inherits
from medsynth.io.quarantine import QuarantineEntry
from tests.conftest import shared


def _volumes(root, workers):
    items = list(iter_volumes(root, workers=workers))
    vols = [v for v in items if isinstance(v, ConvertedVolume)]
    return vols, sorted((q.path, q.reason) for q in items if isinstance(q, QuarantineEntry))


def test_a_pooled_conversion_equals_a_one_process_conversion(tmp_path, monkeypatch):
    shutil.copytree(shared("dicom", "dcm_qa_nih", "In", "20180918GE"), tmp_path / "in" / "ge")
    shutil.copytree(shared("dicom", "dcm_qa_ts", "In"), tmp_path / "in" / "ts")  # compressed, big endian, mosaic
    sent: list = []
    real_submit = convert._in_pool

    def recording(pool, jobs, fast):
        sent.extend(job[3] for job in jobs)
        return real_submit(pool, jobs, fast)

    monkeypatch.setattr(convert, "_in_pool", recording)
    pooled, pooled_q = _volumes(tmp_path / "in", workers=2)
    one, one_q = _volumes(tmp_path / "in", workers=1)
    assert len(sent) == len(one) == 13 and pooled_q == one_q
    if fork_inherits():
        assert all(headers is None for headers in sent)  # the headers stayed in the parent's memory
    assert convert._inherited_headers == {}
    for a, b in zip(pooled, one, strict=True):
        assert a.source == b.source and a.source_files == b.source_files
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.affine, b.affine)


def test_the_default_is_one_process_below_a_thousand_image_files(monkeypatch):
    monkeypatch.setattr(convert.os, "cpu_count", lambda: 16)
    assert convert.default_workers(999) == 1 and convert.default_workers(1000) == 16
    monkeypatch.setattr(convert.os, "cpu_count", lambda: None)
    assert convert.default_workers(5000) == 1
