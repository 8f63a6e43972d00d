"""The package's layers, checked by reading imports (docs/architecture.md, "Rules that keep it clean").

Layers, lowest first: config → state → imap → engine → service → cli. A module may import its own layer
and the layers below it, never one above. `errors` is below them all; `lab` (test servers and sample
mail) stands beside them and only the CLI (the demo) may use it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "mailmirror"
ORDER = ["errors", "config", "state", "imap", "engine", "service", "cli"]
KNOWN: set[tuple[str, str]] = set()  # crossings still to remove


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield ".".join(("mailmirror", *parts)).removesuffix(".__init__"), path


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            for alias in node.names:  # `from mailmirror.imap import oauth2` imports a module too
                yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "mailmirror" or len(parts) < 2 or parts[1] in {"__version__", "__main__"}:
        return None
    return parts[1]


def _crossings() -> set[tuple[str, str]]:
    found = set()
    for module, path in _modules():
        own = _layer(module)
        if own is None:
            continue
        for imported in _imports(path):
            other = _layer(imported)
            if other is None or other == own:
                continue
            if other == "lab":
                allowed = own == "cli"
            elif own == "lab":
                allowed = other == "errors"
            else:
                allowed = ORDER.index(other) < ORDER.index(own)
            if not allowed:
                found.add((module, ".".join(imported.split(".")[:3])))
    return found


def test_no_module_imports_from_a_higher_layer() -> None:
    crossings = _crossings()
    assert crossings - KNOWN == set(), "imports from a higher layer (or into the lab) — see docs/architecture.md"


def test_the_list_of_known_crossings_is_up_to_date() -> None:
    assert KNOWN - _crossings() == set(), "a known crossing is gone: remove it from KNOWN"


def test_every_module_lives_in_a_layer() -> None:
    stray = [
        module for module, _ in _modules() if module.count(".") == 1 and _layer(module) not in {*ORDER, "lab", None}
    ]
    assert stray == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "state").glob("*.py")), ids=lambda path: path.stem)
def test_state_knows_no_imap(path: Path) -> None:
    assert not [name for name in _imports(path) if name.startswith(("imapclient", "mailmirror.imap"))]


def test_only_the_cli_and_the_lab_print() -> None:
    printing = []
    for module, path in _modules():
        if _layer(module) in {"cli", "lab", None}:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{module}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr in {"echo", "secho"}:
                printing.append(f"{module}:{node.lineno}")
    assert printing == []
