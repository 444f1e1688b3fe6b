#!/usr/bin/env python3
"""Fails when a crate's code (its tests left out) reads files or opens sockets.

Usage: no_io.py SRC_DIR. Left out: `test_support.rs` (compiled for tests only, by its
`#[cfg(test)] mod` declaration) and each `#[cfg(test)] mod ... { }` block; comments are
ignored. Used on the domain (ARCHITECTURE.md: the rules without I/O).
"""

import re
import sys
from pathlib import Path

IO = re.compile(
    r"std::fs|std::net|\bfs::|File::|OpenOptions|canonicalize|read_dir|\.metadata\(|"
    r"\.exists\(\)|\.is_file\(\)|\.is_dir\(\)|std::\{[^}]*\b(fs|net)\b|TcpStream|UdpSocket"
)


def code_outside_tests(text: str) -> list[tuple[int, str]]:
    """Lines outside `#[cfg(test)] mod x { ... }` blocks, comments stripped."""
    lines = [line.split("//")[0] for line in text.splitlines()]
    kept: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]":
            k = i + 1
            while k < len(lines) and lines[k].strip().startswith("#["):
                k += 1
            if k < len(lines) and re.match(r"\s*(pub(\(crate\))? )?mod \w+ *\{", lines[k]):
                depth = 0
                while k < len(lines):
                    depth += lines[k].count("{") - lines[k].count("}")
                    k += 1
                    if depth == 0:
                        break
                i = k
                continue
        kept.append((i + 1, lines[i]))
        i += 1
    return kept


def main() -> int:
    src = Path(sys.argv[1])
    bad = []
    for path in sorted(src.rglob("*.rs")):
        if path.name == "test_support.rs":
            continue
        for number, line in code_outside_tests(path.read_text()):
            if IO.search(line):
                bad.append(f"{path}:{number}: {line.strip()}")
    for b in bad:
        print(f"does I/O outside its tests: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
