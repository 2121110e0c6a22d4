"""The layers of DESIGN.md, enforced: every import of every module (inside functions too) points
down. core <- methods <- organism <- pipelines <- cli; report renders typed summaries and needs
core alone (pipelines may call it). Methods never write run directories, and no module reaches
into another package's private helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "rotelab"

CORE = "core"
METHODS = "methods"
ORGANISM = "organism"
REPORT = "report"
PIPELINES = "pipelines"
CLI = "cli"

#: Top-level names under rotelab and their layer; a new package must be placed here.
LAYER_OF = {
    "rotelab": CORE,  # the package's own __init__ (version, errors)
    "errors": CORE,
    "paths": CORE,
    "machine": CORE,
    "lm": CORE,
    "runs": CORE,
    "distributed": CORE,
    "stats": CORE,
    "options": CORE,
    "registry": CORE,
    "sources": CORE,
    "steered": CORE,
    "summaries": CORE,
    "data": CORE,
    "measure": METHODS,
    "curvature": METHODS,
    "edit": METHODS,
    "train": METHODS,
    "phonetic": METHODS,
    "theory": METHODS,
    "recsys": METHODS,
    "termnorm": METHODS,
    "tasks": METHODS,
    "organism": ORGANISM,
    "report": REPORT,
    "pipelines": PIPELINES,
    "cli": CLI,
    "__main__": CLI,
}

MAY_IMPORT = {
    CORE: {CORE},
    METHODS: {CORE, METHODS},
    ORGANISM: {CORE, METHODS, ORGANISM},
    REPORT: {CORE, REPORT},
    PIPELINES: {CORE, METHODS, ORGANISM, REPORT, PIPELINES},
    CLI: {CORE, METHODS, ORGANISM, REPORT, PIPELINES, CLI},
}

#: What writes a run directory; only pipelines (and the organism's own cache) may use it.
RUN_WRITERS = {"Run", "OutputDir", "check_output"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rotelab"


def _imports(path: Path):
    """(line, imported module, names) for every rotelab import in the file, nested ones too."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if target.startswith("rotelab"):
                if not node.module:  # from . import x: x are modules
                    for name in names:
                        yield node.lineno, f"{target}.{name}", []
                else:
                    yield node.lineno, target, names
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rotelab"):
                    yield node.lineno, alias.name, []


def _files():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_layer():
    tops = {_top(_module_name(p)) for p in _files()}
    assert tops <= set(LAYER_OF), f"place these in LAYER_OF: {sorted(tops - set(LAYER_OF))}"


def test_imports_point_down():
    wrong = []
    for path in _files():
        module = _module_name(path)
        layer = LAYER_OF[_top(module)]
        for line, target, names in _imports(path):
            target_layer = LAYER_OF.get(_top(target), CORE)
            rel = f"{path.relative_to(SRC)}:{line}"
            if target_layer not in MAY_IMPORT[layer]:
                wrong.append(f"{rel} {module} ({layer}) imports {target} ({target_layer})")
            elif layer == METHODS and target == "rotelab.runs" and RUN_WRITERS & set(names):
                wrong.append(f"{rel} {module} is a method and writes run directories")
            elif _top(target) != _top(module) and any(n.startswith("_") for n in names):
                wrong.append(f"{rel} {module} imports private {names} from {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from rotelab.pipelines.inputs import resolve_model\n", "imports rotelab.pipelines"),
        ("def f():\n    from rotelab.organism import Organism\n", "imports rotelab.organism"),
        ("from rotelab.runs import Run\n", "writes run directories"),
        ("from rotelab.curvature.kfac import _draw\n", "imports private"),
    ],
)
def test_the_check_catches(tmp_path, monkeypatch, source, expected):
    """The checker itself fails on each kind of wrong import (in a method module)."""
    fake = PACKAGE / "measure" / "_layers_probe.py"
    monkeypatch.setattr("test_layers._files", lambda: [fake], raising=True)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    with pytest.raises(AssertionError, match=expected):
        test_imports_point_down()
