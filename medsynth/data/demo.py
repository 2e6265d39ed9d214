"""The embedded demo cohort: deterministic anatomy-like CT phantoms written as real DICOM and NIfTI.

Each phantom is a function of physical position (DICOM LPS, mm): a body with a fat layer, lungs, a
spine and an organ (label 1); patients with the rare condition carry a lesion in the organ (label 2).
Every series samples that function on its own grid -- axial, sagittal or oblique -- so the geometry of
what ingestion produces can be checked against the phantom itself.

Headers hold *fake* PHI (names, IDs, birth dates, institution, physician, UIDs, dates, a private tag)
and folder names hold patient names, as PACS exports do, so de-identification really has work to do.
Nothing is downloaded: the same seed gives byte-identical pixel data.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, RLELossless

from medsynth.config import DEMO_CONDITIONS, DemoConfig
from medsynth.io.dicom import LPS_TO_RAS
from medsynth.io.writers import write_csv_atomic

FIRST = ["JANE", "JOHN", "MARIA", "AHMED", "WEI", "OLGA", "PIERRE", "AMARA", "KENJI", "LUCIA", "NOAH", "FATIMA"]
LAST = ["DOE", "SMITH", "GARCIA", "KHAN", "CHEN", "IVANOVA", "MARTIN", "OKAFOR", "TANAKA", "ROSSI", "MULLER", "SILVA"]
INSTITUTIONS = ["ST ELSEWHERE GENERAL HOSPITAL", "MERCY COUNTY MEDICAL CENTRE", "RIVERSIDE UNIVERSITY CLINIC"]
UID_ROOT = "1.2.826.0.1.3680043.10.543."  # demo-only root; de-identification replaces every UID

# CT values (HU) of the phantom's tissues
HU = {"air": -1000.0, "fat": -100.0, "soft": 40.0, "lung": -850.0, "bone": 700.0, "organ": 65.0}


@dataclass(frozen=True)
class Phantom:
    """Shape parameters of one patient's phantom (all mm, LPS)."""

    body: tuple[float, float, float]
    wobble: tuple[float, float, float]
    organ_center: tuple[float, float, float]
    organ_radii: tuple[float, float, float]
    lesion_center: tuple[float, float, float] | None
    lesion_radius: float
    lesion_hu: float

    @classmethod
    def random(cls, rng: np.random.Generator, lesion: bool) -> Phantom:
        body = (float(rng.uniform(50, 60)), float(rng.uniform(38, 46)), float(rng.uniform(56, 66)))
        organ_c = (float(rng.uniform(-24, -14)), float(rng.uniform(-8, 2)), float(rng.uniform(-14, -4)))
        organ_r = (float(rng.uniform(20, 26)), float(rng.uniform(16, 21)), float(rng.uniform(18, 24)))
        lesion_c: tuple[float, float, float] | None = None
        if lesion:
            off = rng.uniform(-0.4, 0.4, size=3) * np.array(organ_r)
            lesion_c = (float(organ_c[0] + off[0]), float(organ_c[1] + off[1]), float(organ_c[2] + off[2]))
        w = rng.uniform(0.0, 2 * np.pi, size=3)
        return cls(
            body=body,
            wobble=(float(w[0]), float(w[1]), float(w[2])),
            organ_center=organ_c,
            organ_radii=organ_r,
            lesion_center=lesion_c,
            lesion_radius=float(rng.uniform(9, 13)),  # 2-3 voxels at the demo's 4 mm grid: visible, learnable
            lesion_hu=float(rng.choice([130.0, 5.0])),
        )

    def labels(self, p: np.ndarray) -> np.ndarray:
        """Label map at LPS points p (..., 3): 0 background, 1 organ, 2 lesion."""
        organ = _ellipsoid(p, self.organ_center, self.organ_radii, self.wobble, 0.06) <= 1.0
        lab = organ.astype(np.uint8)
        if self.lesion_center is not None:
            d = np.linalg.norm(p - np.array(self.lesion_center), axis=-1)
            lab[(d <= self.lesion_radius) & organ] = 2
        return lab

    def hu(self, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """CT values (HU) at LPS points p, with scanner-like noise."""
        body = _ellipsoid(p, (0.0, 0.0, 0.0), self.body, self.wobble, 0.04)
        out = np.full(p.shape[:-1], HU["air"])
        out[body <= 1.0] = HU["fat"]
        out[body <= 0.82] = HU["soft"]
        for side in (-1, 1):
            lung = _ellipsoid(p, (side * 0.42 * self.body[0], -2.0, 0.45 * self.body[2]),
                              (0.3 * self.body[0], 0.55 * self.body[1], 0.35 * self.body[2]), self.wobble, 0.05)
            out[(lung <= 1.0) & (body <= 0.82)] = HU["lung"]
        spine = np.hypot(p[..., 0], p[..., 1] - 0.62 * self.body[1]) <= 8.0
        out[spine & (body <= 0.9)] = HU["bone"]
        lab = self.labels(p)
        out[lab == 1] = HU["organ"]
        out[lab == 2] = self.lesion_hu
        return out + rng.normal(0.0, 12.0, size=out.shape)


def _ellipsoid(p, center, radii, phase, amp) -> np.ndarray:
    q = (p - np.array(center)) / np.array(radii)
    # a smooth, patient-specific wobble of the surface
    w = 1.0 + amp * (np.sin(3 * q[..., 0] + phase[0]) * np.sin(2 * q[..., 1] + phase[1]) + np.sin(2 * q[..., 2] + phase[2]))
    return np.sqrt(np.sum(q * q, axis=-1)) / w


@dataclass(frozen=True)
class Grid:
    """A DICOM acquisition grid: direction cosines (LPS), first-voxel position, spacings, size."""

    row: np.ndarray
    col: np.ndarray
    origin: np.ndarray
    pixel: float
    slice_gap: float
    size: int
    slices: int

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.col)

    def ipp(self, k: int) -> np.ndarray:
        return self.origin + k * self.slice_gap * self.normal

    def points(self, k: int) -> np.ndarray:
        r, c = np.meshgrid(np.arange(self.size), np.arange(self.size), indexing="ij")
        return self.ipp(k) + c[..., None] * self.pixel * self.row + r[..., None] * self.pixel * self.col

    def ras_affine(self) -> np.ndarray:
        a = np.eye(4)
        a[:3, 0] = self.row * self.pixel
        a[:3, 1] = self.col * self.pixel
        a[:3, 2] = self.normal * self.slice_gap
        a[:3, 3] = self.origin
        return LPS_TO_RAS @ a


def _rotation(axis: str, deg: float) -> np.ndarray:
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def make_grid(plane: str, rng: np.random.Generator, size: int = 48, slices: int = 40) -> Grid:
    if plane == "axial":
        row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    elif plane == "sagittal":
        row, col = np.array([0, 1.0, 0]), np.array([0, 0, -1.0])
    else:  # oblique: axial tilted about x and z
        rot = _rotation("x", float(rng.uniform(12, 20))) @ _rotation("z", float(rng.uniform(-10, 10)))
        row, col = rot @ np.array([1.0, 0, 0]), rot @ np.array([0, 1.0, 0])
    pixel, gap = 3.0, 3.5
    normal = np.cross(row, col)
    center = rng.uniform(-4, 4, size=3)
    origin = center - (size - 1) / 2 * pixel * (row + col) - (slices - 1) / 2 * gap * normal
    return Grid(row, col, origin, pixel, gap, size, slices)


@dataclass
class DemoCase:
    index: int
    patient_id: str
    patient_name: str
    condition: str
    plane: str
    fmt: str  # "dicom", "dicom-rle" or "nifti"
    image_path: str  # relative to the cohort root: series folder or NIfTI file
    mask_path: str


def _uid(seed_text: str) -> str:
    n = int(hashlib.sha256(seed_text.encode()).hexdigest()[:24], 16)
    return UID_ROOT + str(n)


def _fake_identity(rng: np.random.Generator, i: int) -> dict:
    first, last = FIRST[i % len(FIRST)], LAST[(i * 7 + 3) % len(LAST)]
    birth = _dt.date(1940, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365 * 60)))
    study = _dt.date(2019, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365 * 4)))
    age = (study - birth).days // 365
    return {
        "PatientName": f"{last}^{first}^Q",
        "PatientID": f"MRN{4711000 + i * 37:07d}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": "F" if i % 2 else "M",
        "PatientAge": f"{age:03d}Y",
        "PatientWeight": f"{float(rng.uniform(50, 100)):.1f}",
        "StudyDate": study.strftime("%Y%m%d"),
        "InstitutionName": INSTITUTIONS[i % len(INSTITUTIONS)],
        "ReferringPhysicianName": f"{LAST[(i + 5) % len(LAST)]}^{FIRST[(i + 2) % len(FIRST)]}^DR",
        "AccessionNumber": f"ACC{900000 + i * 13}",
    }


def _slice_dataset(ident: dict, case: DemoCase, grid: Grid, k: int, pixels: np.ndarray, study_uid: str, series_uid: str, for_uid: str) -> Dataset:
    sop_uid = _uid(f"{series_uid}/{k}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = "ELSEWHERE_CT1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    for key, value in ident.items():
        setattr(ds, key, value)
    ds.StudyTime = "093000"
    ds.SeriesDate = ident["StudyDate"]
    ds.AcquisitionDate = ident["StudyDate"]
    ds.ContentDate = ident["StudyDate"]
    ds.ContentTime = f"0931{k % 60:02d}"
    ds.Modality = "CT"
    ds.Manufacturer = "MEDSYNTH PHANTOM"
    ds.ManufacturerModelName = "DEMO-CT"
    ds.StationName = "CT3-ELSEWHERE"
    ds.OperatorsName = "TECH^TINA"
    ds.StudyDescription = f"CT ABDOMEN {ident['PatientName'].split('^')[0]}"
    ds.SeriesDescription = f"{case.plane.upper()} SOFT TISSUE"
    ds.StudyID = f"S{case.index:04d}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.SeriesNumber = 2
    ds.InstanceNumber = int(k + 1)
    ds.AcquisitionNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [f"{v:.4f}" for v in grid.ipp(k)]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([grid.row, grid.col])]
    ds.PixelSpacing = [f"{grid.pixel:g}", f"{grid.pixel:g}"]
    ds.SliceThickness = f"{grid.slice_gap:g}"
    ds.SliceLocation = f"{float(np.dot(grid.ipp(k), grid.normal)):.4f}"
    ds.KVP = "120"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    # a vendor private block holding PHI, as real PACS exports do
    block = ds.private_block(0x0009, "ELSEWHERE PACS", create=True)
    block.add_new(0x01, "LO", ident["PatientName"])
    block.add_new(0x02, "LO", ident["PatientID"])
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def generate_demo_cohort(out_dir: Path, cfg: DemoConfig, seed: int = 1234, progress=None) -> list[DemoCase]:
    """Write the demo cohort under ``out_dir`` (replaced) and return its cases. Also writes labels.csv."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n = cfg.patients
    n_rare = max(2, int(round(cfg.rare_fraction * n)))
    rare = set(rng.choice(n, size=n_rare, replace=False).tolist())
    order = rng.permutation(n)
    nifti_idx = set(order[: cfg.nifti_cases].tolist())
    rle_idx = set(order[cfg.nifti_cases : cfg.nifti_cases + cfg.compressed_cases].tolist())
    cases: list[DemoCase] = []
    for i in range(n):
        prng = np.random.default_rng([seed, i])
        ident = _fake_identity(prng, i)
        condition = DEMO_CONDITIONS[1] if i in rare else DEMO_CONDITIONS[0]
        phantom = Phantom.random(prng, lesion=i in rare)
        plane = "axial" if i % 5 not in (3, 4) else ("sagittal" if i % 5 == 3 else "oblique")
        grid = make_grid(plane, prng)
        fmt = "nifti" if i in nifti_idx else ("dicom-rle" if i in rle_idx else "dicom")
        folder = Path(f"{ident['PatientName'].split('^')[0]}_{ident['PatientName'].split('^')[1]}_{ident['PatientID']}")
        labels = np.stack([grid.points(k) for k in range(grid.slices)], axis=2)  # (r, c, k, 3)
        lab = phantom.labels(labels).transpose(1, 0, 2)  # -> (c, r, k) voxel order
        hu = phantom.hu(labels, prng)  # (r, c, k)
        mask_rel = folder / "segmentation_mask.nii.gz"
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
        mask_img = nib.Nifti1Image(lab.astype(np.uint8), grid.ras_affine())
        nib.save(mask_img, str(out_dir / mask_rel))
        if fmt == "nifti":
            img_rel = folder / f"{ident['PatientID']}_ct.nii.gz"
            img = nib.Nifti1Image(np.round(hu.transpose(1, 0, 2)).astype(np.int16), grid.ras_affine())
            img.header["descrip"] = f"{ident['PatientName']} {ident['PatientBirthDate']}".encode()
            nib.save(img, str(out_dir / img_rel))
        else:
            img_rel = folder / ident["StudyDate"] / "SER00002"
            (out_dir / img_rel).mkdir(parents=True, exist_ok=True)
            study_uid = _uid(f"study/{seed}/{i}")
            series_uid = _uid(f"series/{seed}/{i}")
            for_uid = _uid(f"for/{seed}/{i}")
            stored = np.clip(np.round(hu + 1024), 0, 4095)
            for k in range(grid.slices):
                ds = _slice_dataset(ident, DemoCase(i, "", "", condition, plane, fmt, "", ""), grid, k, stored[:, :, k], study_uid, series_uid, for_uid)
                if fmt == "dicom-rle":
                    ds.compress(RLELossless, generate_instance_uid=False)  # lossless: same instance; no random UID
                name = f"IM{(k * 7919) % 100000:05d}"  # file names unrelated to slice order
                ds.save_as(out_dir / img_rel / name, enforce_file_format=True)
        cases.append(DemoCase(i, ident["PatientID"], ident["PatientName"], condition, plane, fmt, str(img_rel), str(mask_rel)))
        if progress:
            progress(i)
    if cfg.bad_files:
        _write_bad_inputs(out_dir, cases, seed)
    write_csv_atomic(
        out_dir / "labels.csv",
        [{"case": c.image_path, "condition": c.condition, "mask": c.mask_path} for c in cases],
        ["case", "condition", "mask"],
    )
    return cases


def _write_bad_inputs(out_dir: Path, cases: list[DemoCase], seed: int) -> None:
    """Inputs that ingestion must quarantine with a reason while the rest goes on."""
    bad = out_dir / "misc_export"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "EMPTY.DCM").write_bytes(b"")
    (bad / "readme.txt").write_text("Exported from PACS by TECH^TINA\n")
    first_dicom = next(c for c in cases if c.fmt == "dicom")
    src = sorted((out_dir / first_dicom.image_path).iterdir())[0]
    data = src.read_bytes()
    (bad / "TRUNCATED").write_bytes(data[: len(data) // 2])
    # a lone 2D image in its own series
    import pydicom

    ds = pydicom.dcmread(src)
    ds.SeriesInstanceUID = _uid(f"lonely/{seed}")
    ds.SOPInstanceUID = _uid(f"lonely-sop/{seed}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = 99
    ds.save_as(bad / "SCOUT", enforce_file_format=True)
