"""The complexity gate: no function or method in the given folders above MAX_COMPLEXITY, by radon's
cyclomatic complexity (the numbers ``radon cc`` prints). ``bash scripts/test.sh`` runs it over core/ and
daemon/ before the tests; a function above the limit fails it, named with its file and line.

    .venv/bin/python scripts/complexity.py core daemon
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from radon.complexity import cc_visit
from radon.visitors import Class, Function

MAX_COMPLEXITY = 15


def functions(blocks: Iterable[Function | Class]) -> Iterator[Function]:
    """Every function, method and nested function of radon's blocks (which list methods both on their own
    and in their class: each is yielded once)."""
    seen = set()
    for block in _nested(blocks):
        if (block.lineno, block.fullname) not in seen:
            seen.add((block.lineno, block.fullname))
            yield block


def _nested(blocks: Iterable[Function | Class]) -> Iterator[Function]:
    for block in blocks:
        if isinstance(block, Class):
            yield from _nested(block.methods)
            yield from _nested(block.inner_classes)
        else:
            yield block
            yield from _nested(block.closures)


def main(folders: list[str]) -> int:
    measured = [
        (f.complexity, f"{path}:{f.lineno}: {f.fullname}")
        for folder in folders
        for path in sorted(Path(folder).rglob("*.py"))
        for f in functions(cc_visit(path.read_text(encoding="utf-8")))
    ]
    too_complex = sorted((m for m in measured if m[0] > MAX_COMPLEXITY), reverse=True)
    for complexity, where in too_complex:
        print(f"{where} has cyclomatic complexity {complexity} (at most {MAX_COMPLEXITY}): split it into named steps")
    worst = max(measured, default=(0, "-"))
    print(
        f"complexity: {len(measured)} functions in {', '.join(folders)}, the most complex {worst[0]} ({worst[1]}); "
        f"limit {MAX_COMPLEXITY}: {'FAILED' if too_complex else 'ok'}"
    )
    return 1 if too_complex else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["core", "daemon"]))
