"""The reference in docs/ stays true of the code: every argument documented with its real default,
and every relative link in the README and docs/ points at a file that exists."""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import MISSING
from pathlib import Path

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.pipeline.settings import MonitorConfig

ROOT = Path(__file__).resolve().parents[1]
ARGUMENTS = ROOT / "docs" / "callback.md"


def _documented() -> dict[str, str]:
    """``argument -> default`` from the arguments table of docs/callback.md (a row may name several)."""
    rows = {}
    for line in ARGUMENTS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([a-z_]+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(",")] if len(names) > 1 else [cells[1]]
        if len(defaults) != len(names):
            defaults = [cells[1]] * len(names)
        rows.update(zip(names, defaults, strict=True))
    return rows


def _value(text: str) -> object:
    text = text.strip().strip("`")
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    return ast.literal_eval(text)


def test_every_argument_is_documented_with_its_default():
    documented = _documented()
    parameters = inspect.signature(AttentionMonitor.__init__).parameters
    names = [n for n in parameters if n != "self"]
    missing = [n for n in names if n not in documented]
    assert not missing, f"arguments missing from docs/callback.md: {missing}"
    extra = sorted(set(documented) - set(names))
    assert not extra, f"docs/callback.md documents arguments that do not exist: {extra}"
    wrong = {
        n: (documented[n], parameters[n].default)
        for n in names
        if _value(documented[n]) != parameters[n].default
    }
    assert not wrong, f"documented defaults differ from the code (documented, code): {wrong}"


def test_every_argument_reaches_the_configuration_and_each_default_is_written_once():
    parameters = [n for n in inspect.signature(AttentionMonitor.__init__).parameters if n != "self"]
    fields = MonitorConfig.__dataclass_fields__
    assert sorted(parameters) == sorted(fields)
    with_defaults = [n for n, f in fields.items() if MISSING not in (f.default, f.default_factory)]
    assert not with_defaults, f"defaults belong to the callback's signature alone: {with_defaults}"


def test_every_relative_link_resolves():
    broken = []
    for page in [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if not page.exists():
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_bytes()) < 15_000
