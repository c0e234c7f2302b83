"""docs/architecture.md's picture of the layers, drawn from the code's own imports (grimp, as import-linter reads
them, TYPE_CHECKING imports included).

    .venv/bin/python tests/architecture.py          # rewrite the picture in docs/architecture.md (`make diagram`)
    .venv/bin/python tests/architecture.py --check  # exit 1 if it is not current (tests/test_architecture.py)

Boxes are harness/'s rooms in the order of the `rooms` contract in pyproject.toml (each may import only those
below it), then workloads/ and rules/; each lists its modules. An arrow a --> b: a module of a imports one of b, and
no path through other boxes already leads from a to b (the transitive reduction, so the picture shows the layers,
not every shortcut a room takes down them).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- the layers: drawn by tests/architecture.py -->", "<!-- end of the drawn layers -->"


def rooms() -> list[str]:
    """harness/'s rooms, top first, as the layering contract lists them."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["id"] == "rooms")["layers"]
    return [f"harness.{name.strip()}" for layer in layers for name in layer.split("|")]


def _parts(graph: grimp.ImportGraph, package: str) -> str:
    children = sorted(m.rsplit(".", 1)[1] for m in graph.find_children(package) if not m.endswith("__main__"))
    return " · ".join(children)


def diagram() -> str:
    graph = grimp.build_graph("harness", "workloads", "rules")
    boxes = [*rooms(), "workloads", "rules"]
    lines = ["```mermaid", "flowchart TB"]
    for box in boxes:
        name = box.removeprefix("harness.")
        parts = _parts(graph, box) if graph.find_children(box) else ""
        label = f"{box.replace('.', '/')}/" if parts else f"{box.replace('.', '/')}.py"
        lines.append(f'    {name}["<b>{label}</b>' + (f"<br/>{parts}" if parts else "") + '"]')
    edges = {(a, b) for a in boxes for b in boxes
             if a != b and graph.direct_import_exists(importer=a, imported=b, as_packages=True)}

    def reaches(a: str, b: str, seen: frozenset = frozenset()) -> bool:
        return any(x == a and (y == b or (y not in seen and reaches(y, b, seen | {y}))) for x, y in edges)

    for a, b in sorted(edges, key=lambda e: (boxes.index(e[0]), boxes.index(e[1]))):
        if not any(x == a and y != b and reaches(y, b) for x, y in edges):
            lines.append(f"    {a.removeprefix('harness.')} --> {b.removeprefix('harness.')}")
    lines.append("```")
    return "\n".join(lines)


def current(text: str) -> str:
    """`text` (docs/architecture.md) with the picture between its markers drawn anew."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{diagram()}\n{END}{tail}"


if __name__ == "__main__":
    text = DOC.read_text()
    fresh = current(text)
    if "--check" in sys.argv:
        sys.exit(0 if fresh == text else 1)
    DOC.write_text(fresh)
    print(f"wrote the picture in {DOC}")
