"""Run every benchmarks/bench_*.py (or those named on the command line).

Each module has a ``run() -> list[Figure]``; figures are printed as a table. These
machines are shared and noisy, so each figure is a ratio against a peer measured
side by side or against a physical limit, never a bare number of seconds.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from rich.console import Console
from rich.table import Table

from benchmarks.common import Figure


def main(argv: list[str]) -> int:
    import benchmarks

    names = argv or sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    console = Console(stderr=False)
    figures: list[Figure] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        console.print(f"[bold]{name}[/bold] …", highlight=False)
        figures.extend(module.run())
    table = Table(title="Scalerunner benchmarks")
    for col in ("benchmark", "measured", "against", "ratio", "target", "ok"):
        table.add_column(col)
    failed = 0
    for f in figures:
        ok = f.target is None or f.ratio >= f.target
        failed += not ok
        table.add_row(
            f.name,
            f.measured,
            f.against,
            f"{f.ratio:.3f}",
            "" if f.target is None else f">= {f.target}",
            "yes" if ok else "NO",
        )
    console.print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
