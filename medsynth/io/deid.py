"""Table-driven DICOM de-identification: PS3.15 Annex E Basic Profile plus options.

* The profile is the package's compact copy of Table E.1-1 (``deid_table.json``, derived from the
  standard's JSON by :func:`compact_table`; a test keeps it in step with the source).
* Every action (D, Z, X, K, C, U and the combined codes) is applied, recursively inside sequences.
  Combined codes take the choice that keeps the object valid without keeping the value:
  X/Z -> Z, X/D, Z/D and X/Z/D -> D, X/Z/U* -> U on the contained UIDs.
* Standard attributes the table does not list are removed unless on :data:`SAFE_UNLISTED` (geometry,
  pixel description, acquisition parameters), or kept with ``unlisted_attributes: keep``. Either way,
  free text outside the table (UT, LT, ST), names, dates and UN go, and short text (LO, SH, UC) that is
  not coded vocabulary is cleaned; a CodeMeaning becomes the standard meaning of its code, or is cleaned.
* UIDs become ``2.25.<int>`` from an HMAC of the site key and the original UID: the same key gives the
  same UID in every file and run, so references between objects still resolve.
* Dates shift by a per-patient offset derived from the key (option "modified dates"); otherwise the
  profile removes or blanks them.
* Private attributes go, except a short documented safe list when "retain safe private" is on.
  Overlays (60xx) and curves (50xx) go.
* Images likely to carry burned-in text are refused (quarantined) unless marked BurnedInAnnotation NO.
* The key and the original values never leave this module: logs count actions, never values.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from medsynth.config import DeidConfig

DEMO_KEY = b"medsynth-demo-key: PUBLIC, for the embedded demo cohort of fake patients only"

# CID 7050 "De-identification Method" codes (scheme DCM)
CID7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
}

OPTION_COLUMNS = {
    "retain_longitudinal_modified_dates": "rtnLongModifDatesOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "clean_descriptors": "cleanDescOpt",
    "retain_safe_private": "rtnSafePrivOpt",
}

# Private attributes kept under "Retain Safe Private": (private creator, element low byte) -> meaning.
# Only numeric acquisition parameters that carry no identity and that converters need.
SAFE_PRIVATE = {
    (0x0029, "SIEMENS CSA HEADER", 0x08): "CSA image header type (CS)",
    (0x0029, "SIEMENS CSA HEADER", 0x10): "CSA image header info (OB: mosaic geometry, slice normal)",
    (0x0019, "SIEMENS MR HEADER", 0x0A): "number of images in mosaic (US)",
    (0x0019, "SIEMENS MR HEADER", 0x29): "mosaic slice times (FD, ms from the volume's start)",
    (0x0019, "SIEMENS MR HEADER", 0x0C): "b value (IS)",
    (0x0043, "GEMS_PARM_01", 0x39): "slice acquisition order (IS)",
    (0x0021, "GEMS_RELA_01", 0x4F): "locations in acquisition (SS: the GE B0 field map's volumes)",
    (0x0019, "GEMS_ACQU_01", 0x9C): "pulse sequence name (LO: only 'b0map', see SAFE_PRIVATE_TEXT)",
    (0x0019, "GEMS_ACQU_01", 0x9E): "internal pulse sequence name (LO: only 'B0map')",
    (0x0043, "GEMS_PARM_01", 0x2F): "image type (SS: 1 phase, 2 real, 3 imaginary; written apart from the magnitude)",
    (0x0043, "GEMS_PARM_01", 0x30): "diffusion type (SS: whether the series is DTI)",
    (0x0021, "GEMS_RELA_01", 0x5A): "series diffusion type (SL: whether the series is DTI)",
    (0x0019, "GEMS_ACQU_01", 0xE0): "number of diffusion directions (DS)",
    (0x0019, "GEMS_ACQU_01", 0xBB): "diffusion gradient direction x (DS)",
    (0x0019, "GEMS_ACQU_01", 0xBC): "diffusion gradient direction y (DS)",
    (0x0019, "GEMS_ACQU_01", 0xBD): "diffusion gradient direction z (DS)",
    (0x0019, "GEMS_ACQU_01", 0xA2): "raw data run number (SL: orders and tells apart images of one instance number)",
    (0x2005, "PHILIPS MR IMAGING DD 001", 0x0E): "MR scale slope (FL: floating point values)",
    (0x2001, "PHILIPS IMAGING DD 001", 0x08): "cardiac phase number (IS: trigger times of a phase never split)",
    (0x2005, "PHILIPS MR IMAGING DD 001", 0xA0): "dynamic scan begin time (FL: a trigger time equal to it never splits)",
    (0x2005, "PHILIPS MR IMAGING DD 005", 0x29): "ASL image label type (CS: only LABEL / CONTROL, see SAFE_PRIVATE_TEXT)",
    (0x0021, "SIEMENS MR SDI 02", 0x8E): "ICE dims long (LO: only digits, X and '_', see SAFE_PRIVATE_TEXT; a partial volume)",
    (0x0021, "SIEMENS MR SDI 02", 0xFE): "Siemens per-frame item (SQ: only the ICE dims long kept inside)",
    (0x2001, "PHILIPS IMAGING DD 001", 0x03): "diffusion b value (FL)",
    (0x2005, "PHILIPS MR IMAGING DD 001", 0xB0): "diffusion gradient direction x (FL)",
    (0x2005, "PHILIPS MR IMAGING DD 001", 0xB1): "diffusion gradient direction y (FL)",
    (0x2005, "PHILIPS MR IMAGING DD 001", 0xB2): "diffusion gradient direction z (FL)",
    (0x0065, "IMAGE PRIVATE HEADER", 0x50): "UIH number of slices in a grid image (DS)",
    (0x0065, "IMAGE PRIVATE HEADER", 0x51): "UIH VFrame sequence (SQ: each grid slice's position; its items are de-identified as the data set is)",
}
# safe private sequences: kept only when read as a sequence (then de-identified inside), never as raw bytes
SAFE_PRIVATE_SEQUENCES = {(0x0065, "IMAGE PRIVATE HEADER", 0x51), (0x0021, "SIEMENS MR SDI 02", 0xFE)}
# private text kept under "Retain Safe Private" only when its whole value is what conversion looks for, else
# removed: GE's B0 field map sequence (dcm2niix writes the field map apart from its magnitude), Philips' ASL
# label / control, Siemens' ICE dimension counters
SAFE_PRIVATE_TEXT = {
    (0x0019, "GEMS_ACQU_01", 0x9C): re.compile(r"[a-z0-9]{0,6}b0map[a-z0-9]{0,6}"),  # pulse sequence name
    (0x0019, "GEMS_ACQU_01", 0x9E): re.compile(r"B0map"),  # internal pulse sequence name
    (0x2005, "PHILIPS MR IMAGING DD 005", 0x29): re.compile(r"LABEL|CONTROL"),  # ASL label type
    (0x0021, "SIEMENS MR SDI 02", 0x8E): re.compile(r"[0-9X_]{1,64}"),  # ICE dims long: counters only
}
# text VRs are never kept from private blocks, even on the safe list: free text can hold anything
_SAFE_PRIVATE_VRS = {"OB", "UN", "US", "SS", "UL", "SL", "FL", "FD", "IS", "DS", "CS"}

BURNED_IN_MODALITIES = {"US", "SC", "OT", "XC", "ES", "GM", "SM", "DOC", "IVUS"}
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"

# Words kept in free-text descriptors under "Clean Descriptors": imaging vocabulary only.
DESCRIPTOR_VOCABULARY = set(
    """ax axial sag sagittal cor coronal obl oblique t1 t1w t2 t2w t2* pd pdw flair dwi dti adc epi bold
    fmri rest resting task mprage spgr fspgr tse fse se gre ffe tfe space cube vibe dixon stir swi mra tof
    pc perf perfusion asl b0 fieldmap map phase mag magnitude real imag pre post contrast gad gd c+ c-
    fs fat sat water in opp out 2d 3d ct mr mri pet spect cta localizer scout survey topogram head brain
    neck chest thorax abdomen abd pelvis spine cspine tspine lspine liver kidney adrenal heart cardiac
    lung lungs knee hip shoulder ankle wrist breast prostate whole body wb std standard soft tissue bone
    sharp smooth kernel recon thin thick mpr mip minip vr iso isotropic hr hires lowres dose low high
    arterial venous portal delayed native nc ce phase1 phase2 sms mb pa ap lr rl si is hf fh ref
    calibration cal sense grappa asset arc ipat dynamic dyn dce series image images volume vol mm s ms
    sequential interleaved ascending descending i to s p a l r""".split()
)

# words kept in a cleaned Manufacturer besides the descriptor vocabulary (conversion reads the vendor)
VENDOR_VOCABULARY = DESCRIPTOR_VOCABULARY | set(
    """siemens healthineers philips ge gems general electric medical systems healthcare toshiba canon hitachi
    fujifilm fuji samsung united imaging uih neusoft hologic agfa carestream bruker esaote mindray""".split()
)

# Retain Patient Characteristics keeps these by default (deid.retain_patient_characteristics: true);
# "all" keeps every attribute of the option (ethnic group, smoking status, pregnancy status...).
PATIENT_CHARACTERISTICS = {"00100040", "00101010", "00101020", "00101030"}  # sex, age, size, weight

# Standard attributes outside Table E.1-1 that are kept (deid.unlisted_attributes: remove): what the
# conversion, the SEG reader and a viewer read. UIDs and sequences are not listed: UIDs are replaced or
# kept as the table's U action does, sequences are walked and their items treated like the top level.
SAFE_UNLISTED = frozenset(
    # the object and its pixels
    """SpecificCharacterSet ImageType Modality SeriesNumber InstanceNumber AcquisitionNumber SamplesPerPixel
    PhotometricInterpretation Rows Columns BitsAllocated BitsStored HighBit PixelRepresentation PlanarConfiguration
    PixelAspectRatio NumberOfFrames FrameIncrementPointer SmallestImagePixelValue LargestImagePixelValue PixelPaddingValue
    PixelPaddingRangeLimit FloatPixelData DoubleFloatPixelData ExtendedOffsetTable ExtendedOffsetTableLengths
    RescaleIntercept RescaleSlope RescaleType WindowCenter WindowWidth VOILUTFunction PresentationLUTShape
    LossyImageCompression LossyImageCompressionRatio LossyImageCompressionMethod BurnedInAnnotation
    RecognizableVisualFeatures PixelIntensityRelationship PixelIntensityRelationshipSign"""
    # geometry and slice order
    """ ImagePositionPatient ImageOrientationPatient PixelSpacing ImagerPixelSpacing SliceThickness SpacingBetweenSlices
    SliceLocation PatientPosition PatientOrientation GantryDetectorTilt EchoNumbers TemporalPositionIdentifier
    NumberOfTemporalPositions TriggerTime ImagesInAcquisition"""
    # enhanced multi-frame: frame types, stacks, dimensions
    """ FrameType PixelPresentation VolumetricProperties VolumeBasedCalculationTechnique ComplexImageComponent
    AcquisitionContrast StackID InStackPositionNumber TemporalPositionIndex FrameAcquisitionNumber DimensionIndexValues
    DimensionIndexPointer FunctionalGroupPointer DimensionOrganizationType EffectiveEchoTime"""
    # segmentations and codes
    """ SegmentationType SegmentationFractionalType MaximumFractionalValue SegmentsOverlap SegmentNumber SegmentLabel
    SegmentAlgorithmType SegmentAlgorithmName AlgorithmName AlgorithmVersion ReferencedSegmentNumber ReferencedFrameNumber
    ContentLabel CodeValue CodingSchemeDesignator CodingSchemeVersion CodeMeaning LongCodeValue"""
    # acquisition parameters (image contrast and dose)
    """ Manufacturer ScanningSequence SequenceVariant ScanOptions MRAcquisitionType RepetitionTime EchoTime InversionTime
    FlipAngle EchoTrainLength MagneticFieldStrength ImagingFrequency NumberOfAverages PixelBandwidth AcquisitionMatrix
    InPlanePhaseEncodingDirection PercentSampling PercentPhaseFieldOfView DiffusionBValue DiffusionGradientOrientation
    DiffusionDirectionality KVP XRayTubeCurrent ExposureTime Exposure ReconstructionDiameter"""
    # the software release and the sequence, in the form TECHNICAL_TEXT allows
    """ SoftwareVersions SequenceName""".split()
)
# unlisted short text kept, in either mode, only where its whole value has the technical form conversion reads
# (dcm2niix's Siemens XA and dynamic-series rules), else removed -- never cleaned: a cleaned name says nothing.
# SequenceName: lowercase letters, digits in runs of at most four, '_' and '#', an optional leading '*', at
# least one digit (Siemens '*fl3d1', '*ep_b1000#1', 'fldyn3d1'); upper-case text, a name or a number of five
# digits or more does not match.
TECHNICAL_TEXT = {
    "SoftwareVersions": re.compile(r"syngo (?:MR|CT|MI|PET|MR/PET) [A-Z]{0,2}[0-9]{1,2}[A-Z]?"),  # a Siemens release
    "SequenceName": re.compile(r"\*?(?=[a-z0-9_#]*[0-9])(?![a-z0-9_#]*[0-9]{5})[a-z][a-z0-9_#]{0,14}"),
}
# short text kept as it is: coded vocabulary and identifiers of stacks / units that conversion groups by
VERBATIM_TEXT = frozenset("CodeValue CodingSchemeDesignator CodingSchemeVersion LongCodeValue StackID RescaleType".split())
# removed wherever the table does not list them, in either mode: free text, names, dates, unknown bytes
_REMOVED_UNLISTED_VRS = {"UT", "LT", "ST", "PN", "DA", "DT", "UN"}
_SHORT_TEXT_VRS = {"LO", "SH", "UC"}

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")


# --------------------------------------------------------------------------- table


def compact_table(raw: list[dict[str, Any]]) -> dict[str, Any]:
    """Standard JSON (Table E.1-1) -> compact {tag id: [basic action, {option column: action}]}."""
    out: dict[str, Any] = {}
    for row in raw:
        opts = {k: v for k, v in row.items() if k.endswith("Opt")}
        out[row["id"].lower()] = [row["basicProfile"], dict(sorted(opts.items()))]
    return dict(sorted(out.items()))


def load_table() -> dict[str, Any]:
    text = resources.files("medsynth.io").joinpath("deid_table.json").read_text()
    return json.loads(text)["attributes"]


# --------------------------------------------------------------------------- key


class DeidKeyError(RuntimeError):
    pass


@dataclass(frozen=True)
class DeidKey:
    secret: bytes = field(repr=False)
    source: str  # "env", "file", "demo" or "ephemeral" -- never the key itself
    stable: bool

    def __str__(self) -> str:  # never print the secret
        return f"DeidKey(source={self.source}, stable={self.stable})"


KEY_HELP = (
    "create a site key once and keep it outside the repository, e.g.\n"
    "  medsynth keygen ~/.medsynth/site.key\n"
    "then pass --key-file ~/.medsynth/site.key (pipeline: deid.key_file in params.yaml) "
    "or export MEDSYNTH_DEID_KEY=<hex>."
)


def load_key(cfg: DeidConfig, *, key_file: str | None = None, demo: bool = False, ephemeral: bool | None = None) -> DeidKey:
    """Find the site key: --key-file / deid.key_file, then $MEDSYNTH_DEID_KEY, then demo or throw-away."""
    path = key_file or cfg.key_file
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DeidKeyError(f"{p}: key file not found.\n{KEY_HELP}")
        try:
            secret = p.read_bytes().strip()
        except OSError as exc:
            raise DeidKeyError(f"{p}: key file cannot be read ({exc.strerror or type(exc).__name__}): give the user running "
                               "medsynth read access (chmod 600, owned by that user), or pass another --key-file / deid.key_file") from None
        if len(secret) < 16:
            raise DeidKeyError(f"{p}: key is too short ({len(secret)} bytes, at least 16 needed).\n{KEY_HELP}")
        return DeidKey(secret, "file", True)
    env = os.environ.get(cfg.key_env)
    if env:
        if len(env.strip()) < 16:
            raise DeidKeyError(f"${cfg.key_env} is too short (at least 16 characters needed).\n{KEY_HELP}")
        return DeidKey(env.strip().encode(), "env", True)
    if demo:
        return DeidKey(DEMO_KEY, "demo", True)
    if ephemeral if ephemeral is not None else cfg.ephemeral_key:
        return DeidKey(secrets.token_bytes(32), "ephemeral", False)
    raise DeidKeyError(f"no de-identification key: refusing to run.\n{KEY_HELP}")


# --------------------------------------------------------------------------- pseudonyms


class Pseudonymizer:
    """Keyed, deterministic replacements. Same key -> same outputs; no map is stored anywhere."""

    def __init__(self, key: DeidKey, max_shift_days: int = 365):
        self._key = key.secret
        self.max_shift_days = max_shift_days

    def _digest(self, purpose: str, value: str) -> bytes:
        # surrogateescape: a file name that is not valid UTF-8 is hashed as its bytes
        return hmac.new(self._key, f"{purpose}\x00{value}".encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        return "2.25." + str(int.from_bytes(self._digest("uid", value.strip())[:16], "big"))

    def short_id(self, purpose: str, value: str, n: int = 10) -> str:
        return self._digest(purpose, value).hex()[:n]

    def patient(self, patient_key: str) -> str:
        return "MS" + self.short_id("patient", patient_key, 10).upper()

    def date_shift_days(self, patient_key: str) -> int:
        # always at least one day back, so a shifted date never equals the original
        return -(1 + int.from_bytes(self._digest("date-shift", patient_key)[:4], "big") % self.max_shift_days)

    def file_id(self, relpath: str) -> str:
        """The quarantine id of a file of the input (``relpath``: relative to the input folder)."""
        return "F" + self.short_id("file", relpath, 12)

    def series_id(self, first_relpath: str) -> str:
        """The quarantine id of a series (or part of one), named by the first of its files in the input."""
        return "S" + self.short_id("series", first_relpath, 12)

    def label_id(self, case_key: str) -> str:
        """The quarantine id of a labels CSV row, by its ``case`` value."""
        return "L" + self.short_id("label", case_key, 12)


# --------------------------------------------------------------------------- value helpers


def _shift_date(value: str, days: int) -> str:
    v = value.strip()
    if len(v) < 8 or not v[:8].isdigit():
        return ""
    try:
        d = _dt.date(int(v[:4]), int(v[4:6]), int(v[6:8])) + _dt.timedelta(days=days)
    except ValueError:
        return ""
    return d.strftime("%Y%m%d") + v[8:]


def _dummy(elem: DataElement, pseudo: Pseudonymizer) -> Any:
    vr = elem.VR
    if vr == "DA":
        return "19000101"
    if vr == "DT":
        return "19000101000000"
    if vr == "TM":
        return "000000"
    if vr == "UI":
        return pseudo.uid(str(elem.value))
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
        return 0
    if vr in ("DS", "IS"):
        return "0"
    if vr == "PN":
        return "ANONYMOUS"
    if vr == "AS":
        return "000Y"
    if vr == "CS":
        return "ANONYMIZED"[:16]
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return b""
    return "ANONYMIZED"


def clean_descriptor(value: str, vocabulary: set[str] = DESCRIPTOR_VOCABULARY) -> str:
    """Keep only ``vocabulary`` words and small numbers; every other word becomes '*'."""
    out = []
    for tok in re.split(r"(\s+|[_\-/\\,;:()\[\]+=])", str(value)):
        if not tok or re.fullmatch(r"\s+|[_\-/\\,;:()\[\]+=]", tok):
            out.append(tok)
        elif tok.lower() in vocabulary or re.fullmatch(r"\d{1,3}(\.\d{1,2})?", tok):
            out.append(tok)
        else:
            out.append("*")
    return re.sub(r"\*(\W*\*)+", "*", "".join(out)).strip()[:64]


# --------------------------------------------------------------------------- the de-identifier


@dataclass
class DeidResult:
    dataset: Dataset
    patient: str
    study: str
    series: str
    instance: str
    actions: Counter


class BurnedInTextError(Exception):
    pass


class Deidentifier:
    """Apply the profile to pydicom datasets in memory."""

    def __init__(self, cfg: DeidConfig, key: DeidKey, version: str = ""):
        self.cfg = cfg
        self.key = key
        self.pseudo = Pseudonymizer(key, cfg.max_date_shift_days)
        self.table = load_table()
        self.options = {name for name in OPTION_COLUMNS if getattr(cfg, name)}
        self.version = version

    # -- actions
    def action_for(self, tag_id: str) -> str | None:
        row = self.table.get(tag_id)
        if row is None:
            return None
        basic, opts = row
        for name in sorted(self.options):
            col = OPTION_COLUMNS[name]
            if name == "retain_patient_characteristics" and self.cfg.retain_patient_characteristics != "all" \
                    and tag_id not in PATIENT_CHARACTERISTICS:
                continue
            if col in opts:
                return opts[col]
        return {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}.get(basic, basic)

    def check_burned_in(self, ds: Dataset) -> None:
        if not self.cfg.quarantine_burned_in:
            return
        flag = str(ds.get("BurnedInAnnotation", "")).upper()
        if flag == "YES":
            raise BurnedInTextError("BurnedInAnnotation is YES: pixels may show identifying text")
        modality = str(ds.get("Modality", "")).upper()
        sop = str(ds.get("SOPClassUID", ""))
        if flag != "NO" and (modality in BURNED_IN_MODALITIES or sop.startswith(SECONDARY_CAPTURE_PREFIX)):
            raise BurnedInTextError(
                f"modality {modality or '?'} / secondary capture usually carries burned-in text and "
                "BurnedInAnnotation is not NO"
            )

    def patient_key(self, ds: Dataset) -> str:
        pid = str(ds.get("PatientID", "") or "").strip()
        if pid:
            return "id:" + pid
        name = str(ds.get("PatientName", "") or "").strip()
        birth = str(ds.get("PatientBirthDate", "") or "").strip()
        if name or birth:
            return f"name:{name}|{birth}"
        return "study:" + str(ds.get("StudyInstanceUID", ""))

    def deidentify(self, ds: Dataset) -> DeidResult:
        """De-identify ``ds`` in place and return it with its pseudonyms and action counts."""
        self.check_burned_in(ds)
        pkey = self.patient_key(ds)
        patient = self.pseudo.patient(pkey)
        shift = self.pseudo.date_shift_days(pkey)
        actions: Counter = Counter()
        self._walk(ds, shift, actions)
        # replacements that must be present and consistent
        ds.PatientID = patient
        ds.PatientName = patient
        ds.PatientIdentityRemoved = "YES"
        # LO is at most 64 characters a value: the profile, then one value per option (VM 1-n)
        ds.DeidentificationMethod = [f"medsynth {self.version} PS3.15 E.1-1 Basic Profile"[:64]] + [o[:64] for o in sorted(self.options)] \
            + [f"unlisted attributes: {self.cfg.unlisted_attributes}"]
        codes = Sequence()
        for name in ["basic"] + sorted(self.options):
            item = Dataset()
            item.CodeValue, item.CodeMeaning = CID7050[name]
            item.CodingSchemeDesignator = "DCM"
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if "retain_longitudinal_modified_dates" in self.options else "REMOVED"
        )
        if not self.key.stable:
            ds.PatientComments = "pseudonyms from a throw-away key: NOT stable across runs"
        fm = getattr(ds, "file_meta", None)
        if isinstance(fm, FileMetaDataset):
            if "SOPInstanceUID" in ds:
                fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            for name in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle", "ReceivingApplicationEntityTitle",
                         "SourcePresentationAddress", "SendingPresentationAddress", "ReceivingPresentationAddress",
                         "PrivateInformationCreatorUID", "PrivateInformation"):
                if name in fm:
                    delattr(fm, name)
        study = self.pseudo.short_id("study", str(ds.get("StudyInstanceUID", "")), 8)
        series = self.pseudo.short_id("series", str(ds.get("SeriesInstanceUID", "")), 8)
        instance = self.pseudo.short_id("instance", str(ds.get("SOPInstanceUID", "")), 12)
        return DeidResult(ds, patient, study, series, instance, actions)

    def _walk(self, ds: Dataset, shift: int, actions: Counter) -> None:
        # private blocks to keep (creator element tags), computed per dataset level
        keep_private: set[int] = set()
        keep_sequences: set[int] = set()
        keep_text: dict[int, re.Pattern[str]] = {}
        if "retain_safe_private" in self.options:
            for elem in ds:
                t = elem.tag
                if t.is_private and 0x10 <= t.element <= 0xFF and elem.VR == "LO":
                    creator = str(elem.value).strip().upper()
                    for (group, c, low), _ in SAFE_PRIVATE.items():
                        if c == creator and group == t.group:
                            keep_private.add((t.group << 16) | (t.element << 8) | low)
                            if (group, c, low) in SAFE_PRIVATE_SEQUENCES:
                                keep_sequences.add((t.group << 16) | (t.element << 8) | low)
                            if (group, c, low) in SAFE_PRIVATE_TEXT:
                                keep_text[(t.group << 16) | (t.element << 8) | low] = SAFE_PRIVATE_TEXT[(group, c, low)]
        for tag in list(ds.keys()):
            elem = ds[tag]
            t = Tag(tag)
            group = t.group
            if t.is_private:
                if int(t) in keep_sequences and elem.VR != "SQ":
                    del ds[tag]  # a sequence read as bytes (implicit VR) cannot be de-identified inside
                    actions["X"] += 1
                    continue
                if int(t) in keep_private and elem.VR == "SQ":
                    for item in elem.value:  # the profile applies inside a kept private sequence
                        self._walk(item, shift, actions)
                    actions["K"] += 1
                    continue
                if int(t) in keep_text:
                    value = elem.value.decode("latin-1") if isinstance(elem.value, bytes) else str(elem.value)
                    if keep_text[int(t)].fullmatch(value.strip("\x00 ")):
                        actions["K"] += 1
                        continue
                elif int(t) in keep_private and elem.VR in _SAFE_PRIVATE_VRS and not (
                    elem.VR == "CS" and not re.fullmatch(r"[A-Z0-9_ ]{0,16}", str(elem.value))
                ):
                    actions["K"] += 1
                    continue
                if t.is_private_creator and any((k >> 8) == ((t.group << 16) | (t.element << 8)) >> 8 for k in keep_private):
                    continue
                del ds[tag]
                actions["X"] += 1
                continue
            if 0x6000 <= group <= 0x60FF or 0x5000 <= group <= 0x50FF:
                del ds[tag]
                actions["X"] += 1
                continue
            if t == 0x7FE00010:
                continue
            if t.element == 0:  # group length: no content, and wrong once the group changes
                del ds[tag]
                continue
            action = self.action_for(f"{t:08x}")
            if action is None:
                self._unlisted(ds, tag, elem, shift, actions)
            else:
                self._apply(ds, tag, elem, action, shift, actions)

    def _unlisted(self, ds: Dataset, tag, elem: DataElement, shift: int, actions: Counter) -> None:
        """A standard attribute Table E.1-1 does not list."""
        if elem.VR == "SQ":
            for item in elem.value:
                self._walk(item, shift, actions)
        elif elem.VR == "UI":
            if elem.value and all(_is_instance_uid(str(v)) for v in element_values(elem)):
                # an instance UID: replaced the same keyed way
                elem.value = self._uid_value(elem.value)
                actions["U"] += 1
        elif elem.keyword in TECHNICAL_TEXT:
            kept = [v for v in element_values(elem) if TECHNICAL_TEXT[elem.keyword].fullmatch(str(v).strip())]
            if kept:
                elem.value = kept if len(kept) > 1 else kept[0]
                actions["K"] += 1
            else:
                del ds[tag]
                actions["unlisted"] += 1
        elif elem.VR in _REMOVED_UNLISTED_VRS or (self.cfg.unlisted_attributes == "remove" and elem.keyword not in SAFE_UNLISTED):
            del ds[tag]
            actions["unlisted"] += 1
        elif elem.VR in _SHORT_TEXT_VRS and elem.keyword not in VERBATIM_TEXT and elem.value:
            if elem.keyword == "CodeMeaning":
                meaning = standard_code_meaning(str(ds.get("CodingSchemeDesignator", "")), str(ds.get("CodeValue", "")))
                elem.value = meaning or clean_descriptor(str(elem.value))
            else:
                vocabulary = VENDOR_VOCABULARY if elem.keyword == "Manufacturer" else DESCRIPTOR_VOCABULARY
                elem.value = [clean_descriptor(str(v), vocabulary) for v in element_values(elem)] if elem.VM > 1 \
                    else clean_descriptor(str(elem.value), vocabulary)
            actions["C"] += 1

    def _apply(self, ds: Dataset, tag, elem: DataElement, action: str, shift: int, actions: Counter) -> None:
        actions[action] += 1
        if action not in ("Z", "D", "K", "U", "C"):  # X, or an unknown code in the table: be strict
            del ds[tag]
        elif action == "Z":
            elem.value = Sequence() if elem.VR == "SQ" else None
        elif elem.VR == "SQ":  # D, K, U and C keep a sequence and apply the profile inside its items
            for item in elem.value:
                self._walk(item, shift, actions)
        elif action == "D":
            elem.value = self._uid_value(elem.value) if elem.VR == "UI" else _dummy(elem, self.pseudo)
        elif action == "U":
            if elem.value:
                elem.value = self._uid_value(elem.value)
        elif action == "C":
            self._clean(ds, tag, elem, shift)

    def _uid_value(self, value):
        if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
            return [self.pseudo.uid(str(v)) for v in value]
        return self.pseudo.uid(str(value))

    def _clean(self, ds: Dataset, tag, elem: DataElement, shift: int) -> None:
        if elem.VR in ("DA", "DT"):
            if elem.VM > 1:
                elem.value = [_shift_date(str(v), shift) for v in elem.value]
            elif elem.value:
                elem.value = _shift_date(str(elem.value), shift)
            return
        if elem.VR == "TM":
            return  # time of day kept: dates shift by whole days, intervals are preserved
        if elem.VR in ("LO", "SH", "ST", "LT", "UT", "CS", "UC"):
            if elem.VM > 1:
                elem.value = [clean_descriptor(str(v)) for v in elem.value]
            elif elem.value:
                elem.value = clean_descriptor(str(elem.value))
            return
        if elem.VR in ("AS", "DS", "IS", "US", "FL", "FD", "SS"):
            return  # patient characteristics (age, size, weight) kept under the option
        if elem.VR == "PN":
            elem.value = "ANONYMOUS"
            return
        del ds[tag]


_CODE_MEANINGS: dict[tuple[str, str], str] = {}


def standard_code_meaning(scheme: str, code: str) -> str | None:
    """The meaning pydicom's code dictionary (DCM, SCT, LOINC, UCUM...) gives a code, or None."""
    if not _CODE_MEANINGS:
        from pydicom.sr._concepts_dict import concepts

        # pydicom's generated table: scheme -> concept name -> code -> (meaning, context groups)
        for sch, by_name in cast("dict[str, dict[str, dict[str, tuple[str, list[int]]]]]", concepts).items():
            for codes in by_name.values():
                for value, (meaning, _cids) in codes.items():
                    _CODE_MEANINGS[(sch, value)] = meaning
    return _CODE_MEANINGS.get((scheme.strip(), code.strip()))


def element_values(elem: DataElement) -> list:
    """An element's values as a list, whatever its multiplicity."""
    return list(elem.value) if elem.VM > 1 else [elem.value]


def _is_instance_uid(value: str) -> bool:
    return bool(_UID_RE.match(value)) and not value.startswith("1.2.840.10008.")
