"""Job runtimes on the node: one interface (base.py), a back end per file, registered here by name.

Adding a runtime is its file plus one line in ``make_runtime`` and its name in ``RUNTIMES`` (the
agent config's ``[jobs] runtime`` is checked against it).
"""

from __future__ import annotations

from .base import Runtime

__all__ = ["RUNTIMES", "make_runtime"]

RUNTIMES = ("process", "vm")


def make_runtime(name: str) -> Runtime:
    """The runtime called ``name`` with its defaults (its module imported only when chosen)."""
    if name == "process":
        from .process import ProcessRuntime

        return ProcessRuntime()
    if name == "vm":
        from .vm import VmRuntime

        return VmRuntime()
    raise ValueError(f"unknown job runtime {name!r}, expected one of {', '.join(RUNTIMES)}")
