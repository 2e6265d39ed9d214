"""Patient-level splits, stratified by condition, deterministic from a seed.

No patient ever sits in two splits: the privacy test compares the generator's training patients
(members) with ``holdout`` patients it never saw (non-members).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test", "holdout")


class SplitError(ValueError):
    pass


def _allocate(n: int, fractions: dict[str, float], minimum: int) -> dict[str, int]:
    counts = {s: minimum for s in SPLITS}
    rest = n - minimum * len(SPLITS)
    raw = {s: fractions[s] * n - minimum for s in SPLITS}
    raw = {s: max(v, 0.0) for s, v in raw.items()}
    total = sum(raw.values()) or 1.0
    share = {s: raw[s] / total * rest for s in SPLITS}
    for s in SPLITS:
        counts[s] += int(np.floor(share[s]))
    left = n - sum(counts.values())
    for s in sorted(SPLITS, key=lambda s: -(share[s] - np.floor(share[s])))[:left]:
        counts[s] += 1
    return counts


def assign_splits(
    cases: Sequence[Mapping[str, Any]],
    fractions: dict[str, float],
    seed: int,
    rare_condition: str | None = None,
    minimum: int = 1,
) -> dict[str, str]:
    """Map patient -> split. A patient's stratum is its rare condition if any of its cases has it."""
    by_patient: dict[str, set[str]] = defaultdict(set)
    for c in cases:
        by_patient[c["patient"]].add(c["condition"])
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, conds in sorted(by_patient.items()):
        stratum = rare_condition if rare_condition in conds else sorted(conds)[0]
        strata[stratum].append(patient)
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for stratum in sorted(strata):
        patients = strata[stratum]
        need = minimum * len(SPLITS)
        if len(patients) < need:
            raise SplitError(
                f"condition {stratum!r} has {len(patients)} patient(s); the splits {list(SPLITS)} need at least "
                f"{need} (preprocess.min_cases_per_split={minimum} each). Add cases, merge the condition, or lower "
                "preprocess.min_cases_per_split."
            )
        order = [patients[i] for i in rng.permutation(len(patients))]
        counts = _allocate(len(patients), fractions, minimum)
        i = 0
        for s in SPLITS:
            for p in order[i : i + counts[s]]:
                out[p] = s
            i += counts[s]
    return out
