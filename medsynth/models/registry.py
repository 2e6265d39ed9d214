"""Model registry. Built-in models and third-party ones register the same way: a Python entry point
in the ``medsynth.models`` group naming a GenerativeModule subclass, e.g. in a plug-in's pyproject::

    [project.entry-points."medsynth.models"]
    mygan = "my_package.models:MyGANModule"

``register()`` adds one in-process (tests, notebooks).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medsynth.models.base import GenerativeModule

GROUP = "medsynth.models"
_BUILTIN = {"cgan": "medsynth.models.cgan:CGANModule", "cvae": "medsynth.models.cvae:CVAEModule", "vaegan": "medsynth.models.vaegan:VAEGANModule",
            "counterfactual": "medsynth.models.counterfactual:CounterfactualModule"}
_REGISTERED: dict[str, type[GenerativeModule]] = {}


class UnknownModelError(KeyError):
    pass


def register(name: str, cls: type[GenerativeModule]) -> None:
    _REGISTERED[name] = cls


def _load(spec: str) -> type[GenerativeModule]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def available() -> dict[str, str]:
    names = dict(_BUILTIN)
    for ep in entry_points(group=GROUP):
        names[ep.name] = ep.value
    for name, cls in _REGISTERED.items():
        names[name] = f"{cls.__module__}:{cls.__qualname__}"
    return dict(sorted(names.items()))


def get(name: str) -> type[GenerativeModule]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()
    if name in _BUILTIN:
        return _load(_BUILTIN[name])
    raise UnknownModelError(f"model {name!r} is not registered; available: {sorted(available())}")
