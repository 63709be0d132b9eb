"""The tree is the architecture: each subpackage is a layer, and imports point down only.

A module may import from its own package and from packages below it in `LAYERS`. The root
package wires everything together and may import anything; of the root, only `config` (the
option declarations) and `__init__` (the version) may be imported from below, because they
import nothing from telchat themselves. Imports under TYPE_CHECKING count too: a type a
lower layer names is a dependency on the layer that defines it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "telchat"

# Top to bottom. `clients` sits above `telnet`: it adapts a negotiated telnet connection to a
# Session, so it knows both; the telnet layer reaches the session only through its own ports.
# `web` and `ssh` are doors onto the telnet layer (they carry telnet, or speak it in-process).
LAYERS = ("clients", ("web", "ssh"), "telnet", "session", "features", "chat", "store", ("rules", "obs"))
ROOT_LEAVES = {"telchat", "telchat.config"}


def rank(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package == layer or (isinstance(layer, tuple) and package in layer):
            return index
    raise AssertionError(f"telchat/{package} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def telchat_imports(path: Path) -> Iterator[str]:
    """Every telchat module that `path` imports, by its full dotted name."""
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.split(".")[0] == "telchat")
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            if module.split(".")[0] != "telchat":
                continue
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                yield candidate if _exists(candidate) else module


def _exists(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def violation(importer: str, imported: str) -> str | None:
    source, target = importer.split("."), imported.split(".")
    if len(source) == 2:  # the root wires everything
        return None
    if len(target) <= 2:
        return None if imported in ROOT_LEAVES else f"{importer} imports the root's {imported}"
    if source[1] == target[1]:
        return None
    if rank(target[1]) > rank(source[1]):
        return None
    return f"{importer} ({source[1]}) imports {imported} ({target[1]}), which is not below it"


def test_every_subpackage_is_a_layer() -> None:
    packages = {path.parent.name for path in modules() if path.parent != PACKAGE}
    for package in packages:
        rank(package)


def test_imports_point_down_only() -> None:
    problems = [
        problem
        for path in modules()
        for imported in telchat_imports(path)
        if (problem := violation(module_name(path), imported)) is not None
    ]
    assert problems == []


def test_no_import_cycles() -> None:
    graph = {module_name(path): {m for m in telchat_imports(path) if _exists(m)} for path in modules()}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(module) :], module]))
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, [*trail, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_the_root_is_wiring_only() -> None:
    root = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert len(root) <= 10, root
    assert len([p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]) >= 5


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("telchat.chat.rooms", "telchat.session.session", False),
        ("telchat.rules.names", "telchat.obs.logs", False),
        ("telchat.store.base", "telchat.chat.outbox", False),
        ("telchat.session.session", "telchat.app", False),
        ("telchat.clients.terminal", "telchat.telnet.protocol", True),
        ("telchat.chat.rooms", "telchat.store.events", True),
        ("telchat.telnet.guard", "telchat.config", True),
        ("telchat.app", "telchat.clients.terminal", True),
    ],
)
def test_the_rule_itself(importer: str, imported: str, allowed: bool) -> None:
    assert (violation(importer, imported) is None) is allowed
