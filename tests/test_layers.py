"""The layering rule of stages/ (README, "Architecture"), checked on the source: a package imports only the
packages below it, and a pipeline stage never imports another stage (it reads their entries from the store)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

STAGES_DIR = Path(__file__).resolve().parents[1] / "stages"
# package -> the packages it may import (itself included); stages.errors is the floor every layer may use
ALLOWED = {
    "models": {"models"},
    "method": {"method", "models"},
    "data": {"data", "config"},  # config: the synthetic data's settings are declared like every other
    "config": {"config"},
    "store": {"store", "config"},
    "pipeline": {"pipeline", "store", "config", "data", "method", "models"},
    "apps": {"apps", "pipeline", "store", "config", "data", "method", "models"},
}
PIPELINE_STAGES = {"index", "extract", "train_base", "infer_base", "train_diff", "infer_diff", "fuse", "score",
                   "tune"}


def _imports(path: Path) -> set[str]:
    """Every stages.* module `path` imports, at module level or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "stages":
                out.update(f"stages.{a.name}" for a in node.names)
            elif node.module.startswith("stages."):
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names
                           if (STAGES_DIR / node.module.split(".", 1)[1].replace(".", "/") / f"{a.name}.py").exists())
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (write stages.<package>.<module>)")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("stages."))
    return out


MODULES = sorted(p for p in STAGES_DIR.rglob("*.py") if p.name != "__init__.py")


def _package(path: Path) -> str | None:
    """The layer a module belongs to: its top package under stages/ (apps/predict/loop.py: apps); None at the top."""
    parts = path.relative_to(STAGES_DIR).parts
    return parts[0] if len(parts) > 1 else None


def test_every_module_lives_in_a_package_of_one_job() -> None:
    loose = [p.name for p in STAGES_DIR.glob("*.py") if p.name not in ("__init__.py", "errors.py")]
    assert loose == [], f"modules outside the packages: {loose}"
    assert {_package(p) for p in MODULES} - {None} == set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(STAGES_DIR)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    if path.parent == STAGES_DIR:  # errors.py: the floor
        assert not _imports(path) - {"stages.errors"}
        return
    pkg = _package(path)
    bad = [m for m in _imports(path) if m not in ("stages", "stages.errors", "stages.__version__")
           and m.split(".")[1] not in ALLOWED[pkg]]
    assert not bad, f"stages/{pkg}/{path.name} imports {bad}: {pkg} may use only {sorted(ALLOWED[pkg])}"


@pytest.mark.parametrize("path", [STAGES_DIR / "pipeline" / f"{s}.py" for s in sorted(PIPELINE_STAGES)],
                         ids=lambda p: p.stem)
def test_a_stage_never_imports_another_stage(path: Path) -> None:
    others = {f"stages.pipeline.{s}" for s in PIPELINE_STAGES - {path.stem}}
    assert not _imports(path) & others, f"{path.stem} imports {sorted(_imports(path) & others)}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The rule can fail: an upward import and a stage-to-stage import are both found."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from stages.apps.predict import Predictor\nfrom stages.pipeline import fuse\n")
    assert {"stages.apps.predict", "stages.pipeline.fuse"} <= _imports(f)


def test_every_command_module_is_registered() -> None:
    """drdc_cli declares its command modules in one list (no import-everything side effect)."""
    from drdc_cli.app import COMMAND_MODULES

    cli = STAGES_DIR.parent / "drdc_cli"
    declaring = {p.stem for p in cli.glob("*.py") if "_app.command(" in p.read_text() or "@app.command(" in p.read_text()}
    assert declaring == set(COMMAND_MODULES)
