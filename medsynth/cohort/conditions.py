"""The conditions a cohort has, checked against the settings that name conditions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medsynth.config import ConfigError


def check_per_condition(per_condition: Mapping[str, int], conditions: Sequence[str], cohort: str = "the preprocessed cohort") -> None:
    """ConfigError when ``synthesize.per_condition`` names a condition outside ``conditions`` (those of
    ``cohort``, which the message names: e.g. preprocess.json's, or those a trained model knows)."""
    unknown = sorted(set(per_condition) - set(conditions))
    if not unknown:
        return
    bad = ", ".join(map(repr, unknown))
    verb = "is not a condition" if len(unknown) == 1 else "are not conditions"
    raise ConfigError(f"synthesize.per_condition: {bad} {verb} of {cohort} ({', '.join(map(repr, conditions))}); "
                      "set synthesize.per_condition in params.yaml to counts of these conditions")
