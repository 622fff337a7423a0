"""Running a checks file through a pin back end: one observation per check, then a verdict.

Each check gets its own observation window (its timeout) so one check's drives never disturb
another's; on the sim back end each window is a fresh run from power-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .checks import Check, ChecksFile, LoopbackCheck
from .evaluate import evaluate, loopback_drives
from .pins.base import PinBackend

__all__ = ["CheckResult", "run_checks"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    passed: bool
    message: str
    seconds: float  # wall-clock time the check took


def _kind(check: Check) -> str:
    return type(check).__struct_config__.tag  # type: ignore[return-value]


def run_checks(
    backend: PinBackend, cf: ChecksFile, on_check: Callable[[Check], None] | None = None
) -> list[CheckResult]:
    """Every check of ``cf`` in order. A BenchFault from the back end propagates."""
    results: list[CheckResult] = []
    for check in cf.checks:
        if on_check is not None:
            on_check(check)
        started = time.monotonic()
        drives = loopback_drives(check) if isinstance(check, LoopbackCheck) else []
        trace = backend.observe(cf.signals(check), check.timeout, drives)
        verdict = evaluate(check, trace)
        results.append(
            CheckResult(check.name, _kind(check), verdict.passed, verdict.message, time.monotonic() - started)
        )
    return results
