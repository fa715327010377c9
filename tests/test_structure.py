"""The package's shape: floors whose imports run one way, no cycles, and a light callback import.

Every ``import`` counts, including those inside functions and under ``TYPE_CHECKING``: a cycle hidden
in a function is still a cycle for the reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_attnviz"
# Lowest first: a module may import from its own floor and the floors below it, never above.
FLOORS = ("util", "capture", "analysis", "render", "tab", "sinks", "pipeline", "")
# The tab reads the record format only: the plugin never imports the monitor's stages.
TAB_MAY_IMPORT = ("tab",)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that ``name`` imports, anywhere in its file."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[:len(parts) - node.level + 1], base]).strip(".")
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "lightning_attnviz":
                out.add(t)
    return out


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else ""


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_imports_run_one_way():
    wrong = []
    for module, imported in _graph().items():
        floor = _floor(module)
        for other in imported:
            to = _floor(other)
            tab_wrong = floor == "tab" and to not in TAB_MAY_IMPORT
            into_tab_wrong = to == "tab" and floor not in ("tab", "sinks", "pipeline", "")
            if tab_wrong or into_tab_wrong or (to != "tab" and FLOORS.index(to) > FLOORS.index(floor)):
                wrong.append(f"{module} -> {other}")
    assert not wrong, "imports from a floor above:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    cycles = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in path:
                cycle = path[path.index(nxt) :]
                start = cycle.index(min(cycle))
                cycles.add(" -> ".join(cycle[start:] + cycle[:start]))
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    done: set[str] = set()
    for module in graph:
        if module not in done:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_training_side_imports_no_drawing_code():
    """The callback runs in the training process: the drawing floors (and their matplotlib and PIL)
    belong to the drawing process. Lightning itself may import matplotlib; we add nothing to it."""
    lightning = _loaded_after("import pytorch_lightning")
    ours = _loaded_after("import lightning_attnviz.callback")
    vocabulary = {"lightning_attnviz.render", "lightning_attnviz.render.plots"}  # names of plot kinds only
    drawing = sorted(
        m for m in ours if m.startswith(("lightning_attnviz.render", "lightning_attnviz.pipeline.run"))
    )
    drawing = [m for m in drawing if m not in vocabulary]
    assert not drawing, f"importing the callback imports {drawing}"
    added = sorted(m for m in ("matplotlib", "PIL") if m in ours and m not in lightning)
    assert not added, f"importing the callback imports {added}"


def test_capture_imports_torch_only():
    loaded = _loaded_after("import lightning_attnviz.capture.context")
    heavy = sorted(m for m in ("matplotlib", "PIL", "pytorch_lightning", "lightning") if m in loaded)
    assert not heavy, f"capture imports {heavy}"
