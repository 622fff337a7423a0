"""The hardware-in-the-loop bench for FPGA bitstreams (docs/bench.md).

``hardware`` (connector and boards as data), ``checks`` (the checks file), ``evaluate`` (pure
verdicts over a ``trace``), ``pins/`` (the gpiod and sim back ends), ``program``
(openFPGALoader), ``runner``, ``junit`` and ``cli`` (``scalerunner-bench``).
"""

from __future__ import annotations

from .errors import BenchConfigError, BenchError, BenchFault

__all__ = ["BenchConfigError", "BenchError", "BenchFault"]
