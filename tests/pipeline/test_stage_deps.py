"""Every medsynth file a stage's script imports (transitively) is covered by that stage's dvc.yaml deps,
so a library change reruns every stage whose outputs it can change."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGE = "medsynth"
ENTRY_POINT = re.compile(rf"^{PACKAGE}(\.\w+)+:\w+$")  # "medsynth.models.cgan:CGANModule", imported by name
# Importers that use a module only for what it names, never loading the modules it imports by name:
# config.py validates train.models against the registry's names (it loads only plug-ins, never a built-in).
NAMES_ONLY = {("medsynth/config.py", "medsynth/models/registry.py")}


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for p in (base / "__init__.py", base.with_suffix(".py")):
        if p.is_file():
            return p
    return None


def is_inert(path: Path) -> bool:
    """A module of only a docstring and literal assignments: importing it has no effect on others."""
    for node in ast.parse(path.read_text()).body:
        value = node.value if isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign)) else None
        if value is None or not isinstance(value, ast.Constant):
            return False
    return True


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports for the type checker, never executed)."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and (getattr(node.test, "id", None) == "TYPE_CHECKING" or getattr(node.test, "attr", None) == "TYPE_CHECKING")
            for stmt in node.body for n in ast.walk(stmt)}


def imported_modules(path: Path, by_name: bool = True) -> tuple[set[str], set[str]]:
    """(modules the file imports, anywhere in it but under ``if TYPE_CHECKING:``; their parent packages,
    which importing them executes). ``by_name``: with the modules it names as entry points."""
    named: set[str] = set()
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            named.update(m for m in submodules if module_file(m))
            if not all(module_file(m) for m in submodules):  # a name the module itself defines
                named.add(node.module)
        elif by_name and isinstance(node, ast.Constant) and isinstance(node.value, str) and ENTRY_POINT.match(node.value):
            named.add(node.value.partition(":")[0])
    named = {m for m in named if m.split(".")[0] == PACKAGE and module_file(m)}
    parents = {m.rsplit(".", i)[0] for m in named for i in range(1, m.count(".") + 1)}
    return named, parents - named


def import_closure(script: Path) -> set[Path]:
    """The medsynth files that running ``script`` executes and that can change what it computes."""
    seen: set[tuple[Path, bool]] = set()
    todo = [(script, True)]
    while todo:
        path, by_name = todo.pop()
        named, parents = imported_modules(path, by_name)
        for m in named | {p for p in parents if module_file(p) and not is_inert(module_file(p))}:
            f = module_file(m)
            edge = (f, (rel(path), rel(f)) not in NAMES_ONLY)
            if edge not in seen:
                seen.add(edge)
                todo.append(edge)
    return {f for f, _ in seen}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def expand_stages() -> dict[str, dict]:
    """dvc.yaml's stages with foreach / matrix expanded (``train@cgan``), ``${...}`` from params.yaml."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def lookup(expr: str):
        value = params
        for key in expr.split("."):
            value = value[key]
        return value

    def fill(obj, names: dict):
        if isinstance(obj, str):
            return re.sub(r"\$\{\s*([\w.]+)\s*\}", lambda m: str(names.get(m.group(1), m.group(0))), obj)
        if isinstance(obj, list):
            return [fill(x, names) for x in obj]
        if isinstance(obj, dict):
            return {fill(k, names): fill(v, names) for k, v in obj.items()}
        return obj

    def resolve(value):
        m = re.fullmatch(r"\$\{\s*([\w.]+)\s*\}", value) if isinstance(value, str) else None
        return lookup(m.group(1)) if m else value

    stages = {}
    for name, stage in dvc["stages"].items():
        if "foreach" in stage:
            items = resolve(stage["foreach"])
            pairs = items.items() if isinstance(items, dict) else ((x, x) for x in items)
            for key, item in pairs:
                names = {"key": key, "item": item}
                if isinstance(item, dict):
                    names.update({f"item.{k}": v for k, v in item.items()})
                stages[f"{name}@{key}"] = fill(stage["do"], names)
        elif "matrix" in stage:
            axes = {k: resolve(v) for k, v in stage["matrix"].items()}
            body = {k: v for k, v in stage.items() if k != "matrix"}
            for combo in itertools.product(*axes.values()):
                names = {f"item.{k}": v for k, v in zip(axes, combo, strict=False)}
                stages[f"{name}@{'-'.join(map(str, combo))}"] = fill(body, names)
        else:
            stages[name] = stage
    return stages


def dep_paths(stage: dict) -> list[Path]:
    return [ROOT / (next(iter(d)) if isinstance(d, dict) else d) for d in stage.get("deps", [])]


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


STAGES = expand_stages()


def test_foreach_stages_expanded():
    assert {"train@cgan", "train@cvae", "synthesize@cgan"} <= set(STAGES)


def test_closure_follows_function_and_by_name_imports():
    train = {rel(p) for p in import_closure(ROOT / "pipelines/train.py")}
    assert {"medsynth/models/cgan.py", "medsynth/models/vaegan.py"} <= train  # loaded by name from the registry
    assert "medsynth/eval/encoder.py" in train  # imported inside a function of models/perceptual.py
    ingest = {rel(p) for p in import_closure(ROOT / "pipelines/ingest.py")}
    assert "medsynth/models/registry.py" in ingest and "medsynth/models/cgan.py" not in ingest
    assert "medsynth/__init__.py" in ingest  # from medsynth import __version__


@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_cover_imports(name):
    stage = STAGES[name]
    scripts = re.findall(r"pipelines/\w+\.py", stage["cmd"])
    assert scripts, f"{name}: cmd {stage['cmd']!r} runs no pipelines/<script>.py"
    script = ROOT / scripts[0]
    deps = dep_paths(stage)
    needed = {script} | import_closure(script)
    missing = sorted(rel(p) for p in needed if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {name!r} imports files its deps do not list: {missing}"
