"""The train stage's DVC deps name every mdnlab module a training run can import, so that a
change to one reruns the trainings and a change elsewhere (the studies) does not."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    """src/<a>/<b>.py or src/<a>/<b>/__init__.py of the dotted module ``name``."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def mdnlab_imports(path: Path, top_level: bool = False) -> set[tuple[str, bool]]:
    """(module, implicit) for the mdnlab modules ``path`` imports anywhere (function bodies
    included), or with ``top_level`` only where its module body runs on import. ``implicit``:
    only the module's body runs (a parent package, or ``from pkg import submodule``)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body if top_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(a.name, False) for a in node.names if a.name.split(".")[0] == "mdnlab"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mdnlab":
            submodules = {f"{node.module}.{a.name}" for a in node.names}
            submodules = {m for m in submodules if module_file(m) is not None}
            found |= {(m, False) for m in submodules}
            # names that are not submodules are the package's own functions: they may run
            found.add((node.module, len(submodules) == len(node.names)))
    return {(m, implicit) for m, implicit in found if module_file(m) is not None}


def config_targets() -> set[str]:
    """Modules named by ``_target_: mdnlab.x.Y`` in conf/ (Hydra instantiates them)."""
    found = set()
    for path in (ROOT / "conf").rglob("*.yaml"):
        for line in path.read_text().splitlines():
            key, _, value = line.strip().partition(":")
            if key == "_target_" and value.strip().startswith("mdnlab."):
                found.add(value.strip().rsplit(".", 1)[0])
    return found


def reachable_files() -> set[Path]:
    """Files of the modules a training run can import: named ones with all their imports
    (a function-level import may run), parent packages with their module-level ones only
    (importing ``mdnlab.x`` runs ``mdnlab/__init__.py``'s body, not its functions)."""
    pending = mdnlab_imports(SRC / "train.py") | {(m, False) for m in config_targets()}
    seen: set[tuple[str, bool]] = set()
    while pending:
        name, implicit = pending.pop()
        if (name, implicit) in seen:
            continue
        seen.add((name, implicit))
        parts = name.split(".")
        pending |= {(".".join(parts[:i]), True) for i in range(1, len(parts))}
        pending |= mdnlab_imports(module_file(name), top_level=implicit)
    return {module_file(name) for name, _ in seen}


def test_train_stage_deps_cover_every_module_a_run_imports():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]
    deps = [ROOT / d for d in stage["deps"] if not d.startswith("${")]
    files = reachable_files()
    assert ROOT / "src/mdnlab/pipeline.py" in files  # the walk itself works
    missing = sorted(
        str(f.relative_to(ROOT)) for f in files if not any(f == d or d in f.parents for d in deps)
    )
    assert not missing, f"dvc.yaml stages.train.do.deps lacks {missing}"
