#!/usr/bin/env python3
"""Fails when modules of one crate import each other in a cycle (ARCHITECTURE.md, issue 21).

Usage: module_cycles.py SRC_DIR. A module is a top-level file or folder of SRC_DIR; an edge is a
`crate::<module>` path in its code (comments and `#[cfg(test)]` parts left out). Prints each
cycle (a strongly connected set of modules, with the edges inside it) and exits 1 if any.
"""

import re
import sys
from pathlib import Path


def imports(src: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in src.rglob("*.rs"):
        module = path.relative_to(src).parts[0].removesuffix(".rs")
        if module in ("lib", "main"):
            continue
        text = path.read_text()
        cut = text.find("#[cfg(test)]")
        if cut >= 0:
            text = text[:cut]
        code = "\n".join(line.split("//")[0] for line in text.splitlines())
        found = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", code)) - {module}
        graph.setdefault(module, set()).update(found)
    return {m: {r for r in refs if r in graph} for m, refs in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    src = Path(sys.argv[1])
    graph = imports(src)
    bad = cycles(graph)
    for component in bad:
        print(f"{src}: modules import each other in a cycle: {', '.join(component)}", file=sys.stderr)
        for m in component:
            print(f"  {m} -> {', '.join(sorted(graph[m] & set(component)))}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
