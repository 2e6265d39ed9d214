"""The nibabel-free NIfTI writer equals nibabel's canonical reorientation and header."""

import nibabel as nib
import numpy as np
import pytest

from medsynth.io.nifti import make_ras_image
from medsynth.io.nifti_write import closest_ras_orientation, compact_dtype, reorient_to_ras, write_nifti


def _random_affine(rng, case: int) -> np.ndarray:
    if case % 3 == 0:  # a permuted, flipped grid (sagittal, coronal ...)
        rot = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], size=3)
    else:  # an oblique one
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        rot = q * np.sign(np.diag(r))
    aff = np.eye(4)
    aff[:3, :3] = rot * rng.uniform(0.5, 3, size=3)
    aff[:3, 3] = rng.normal(size=3) * 50
    return aff


@pytest.mark.parametrize("case", range(120))
def test_written_file_equals_nibabel(tmp_path, case):
    rng = np.random.default_rng(case)
    shape = tuple(int(n) for n in rng.integers(2, 9, size=3)) + ((3,) if case % 5 == 0 else ())
    data = (rng.integers(-100, 3000, size=shape) if case % 2 else rng.normal(size=shape)).astype(np.float32)
    aff = _random_affine(rng, case)
    nib.save(make_ras_image(data, aff, "medsynth"), tmp_path / "nibabel.nii.gz")
    write_nifti(tmp_path / "ours.nii.gz", *reorient_to_ras(compact_dtype(data), aff), "medsynth")
    ours, ref = nib.load(tmp_path / "ours.nii.gz"), nib.load(tmp_path / "nibabel.nii.gz")
    assert ours.shape == ref.shape
    assert ours.get_data_dtype() == ref.get_data_dtype()
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(ours.get_qform(), ref.get_qform(), atol=1e-4)
    assert (int(ours.header["qform_code"]), int(ours.header["sform_code"])) == (1, 1)
    assert ours.header.get_xyzt_units() == ref.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(ours.header.get_zooms(), ref.header.get_zooms(), rtol=1e-6)
    assert ours.header["descrip"] == ref.header["descrip"]


def test_orientation_of_a_ras_grid_is_identity_and_lps_flips():
    assert closest_ras_orientation(np.eye(4)).tolist() == [[0, 1], [1, 1], [2, 1]]
    assert closest_ras_orientation(np.diag([-1.0, -1.0, 1.0, 1.0])).tolist() == [[0, -1], [1, -1], [2, 1]]
    with pytest.raises(ValueError, match="singular"):
        closest_ras_orientation(np.diag([1.0, 0.0, 1.0, 1.0]))
