"""Telemetry from /proc and /sys: pure parsers over file text, and a thin reader of the real files.

The parsers take the text of one file and return numbers; ``ProcReader`` reads the files under a
root directory (``/`` on a node, a fixture tree in tests); ``Sampler`` keeps the previous CPU
counters so that cpu % is measured over the last interval, not since boot.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..protocol.mqtt import JobSummary, Telemetry

log = logging.getLogger("scalerunner.nodeagent.telemetry")

_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "aarch64_be": "arm64",
    "armv8l": "arm64",
    "armv8b": "arm64",
    "riscv64": "riscv64",
}


def normalise_arch(machine: str) -> str:
    """``platform.machine()`` as the image registry names it: amd64, arm64, riscv64 (others lower-cased)."""
    m = machine.strip().lower()
    return _ARCH.get(m, m or "unknown")


def parse_loadavg(text: str) -> float:
    """The 1-minute load average from /proc/loadavg ("0.52 0.58 0.59 1/467 12345")."""
    try:
        return max(0.0, float(text.split()[0]))
    except (IndexError, ValueError) as exc:
        raise ValueError(f"unexpected /proc/loadavg: {text[:60]!r}") from exc


@dataclass(frozen=True)
class CpuTimes:
    """Aggregate CPU time in jiffies: ``busy`` is everything but idle and iowait."""

    busy: int
    total: int


def parse_cpu_times(text: str) -> CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat.

    Fields: user nice system idle iowait irq softirq steal guest guest_nice. guest and guest_nice
    are already counted in user and nice, so they are left out of the total.
    """
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                values = [int(v) for v in fields[1:9]]
            except ValueError as exc:
                raise ValueError(f"unexpected /proc/stat cpu line: {line[:80]!r}") from exc
            if len(values) < 4:
                break
            values += [0] * (8 - len(values))
            idle = values[3] + values[4]
            total = sum(values)
            return CpuTimes(busy=total - idle, total=total)
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def cpu_percent(prev: CpuTimes | None, cur: CpuTimes) -> float:
    """Busy share of the CPU time between two samples (since boot without ``prev``), 0..100."""
    busy, total = cur.busy, cur.total
    if prev is not None:
        busy, total = cur.busy - prev.busy, cur.total - prev.total
    if total <= 0:  # no time passed, or the counters went backwards (a hot-unplugged CPU)
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * busy / total)), 1)


@dataclass(frozen=True)
class MemInfo:
    total_mb: int
    available_mb: int

    @property
    def used_mb(self) -> int:
        return max(0, self.total_mb - self.available_mb)


def parse_meminfo(text: str) -> MemInfo:
    """MemTotal and MemAvailable from /proc/meminfo (kernels before 3.14: free + buffers + cached)."""
    kb: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kb[name.strip()] = int(parts[0])
    if "MemTotal" not in kb:
        raise ValueError("no MemTotal in /proc/meminfo")
    avail = kb.get("MemAvailable")
    if avail is None:
        avail = kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0)
    total = kb["MemTotal"]
    return MemInfo(total_mb=total // 1024, available_mb=min(avail, total) // 1024)


def parse_temperature(zone_texts: Iterable[str]) -> float | None:
    """The hottest thermal zone in °C from the ``temp`` files' text (millidegrees); None if none reads.

    A zone that reads garbage or an absurd value (a disconnected sensor) is skipped.
    """
    best: float | None = None
    for text in zone_texts:
        try:
            c = int(text.strip()) / 1000.0
        except ValueError:
            continue
        if -60.0 <= c <= 200.0 and (best is None or c > best):
            best = c
    return None if best is None else round(best, 1)


def disk_free_mb(f_bavail: int, f_frsize: int) -> int:
    """Space an unprivileged writer may still use, from statvfs fields."""
    return max(0, f_bavail * f_frsize // (1024 * 1024))


def build_telemetry(
    *,
    node: str,
    ts: float,
    load1: float,
    cpu_pct: float,
    mem: MemInfo,
    temp_c: float | None,
    disk_free: int | None,
    jobs: Sequence[JobSummary] = (),
) -> Telemetry:
    return Telemetry(
        node=node,
        ts=round(ts, 3),
        load1=load1,
        cpu_pct=cpu_pct,
        mem_used_mb=mem.used_mb,
        mem_total_mb=mem.total_mb,
        temp_c=temp_c,
        disk_free_mb=disk_free,
        jobs=list(jobs),
    )


# -- the shell ----------------------------------------------------------------------------------


class ProcReader:
    """Reads the real files under ``root`` (``/proc/...``, ``/sys/class/thermal/...``)."""

    def __init__(self, root: Path = Path("/"), state_dir: Path | None = None) -> None:
        self.root = root
        self.state_dir = state_dir

    def _text(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def load1(self) -> float:
        return parse_loadavg(self._text("proc/loadavg"))

    def cpu_times(self) -> CpuTimes:
        return parse_cpu_times(self._text("proc/stat"))

    def meminfo(self) -> MemInfo:
        return parse_meminfo(self._text("proc/meminfo"))

    def temperature(self) -> float | None:
        texts: list[str] = []
        for zone in sorted((self.root / "sys/class/thermal").glob("thermal_zone*/temp")):
            try:
                texts.append(zone.read_text())
            except OSError:  # some zones refuse reads (ENODATA) while their sensor sleeps
                continue
        return parse_temperature(texts)

    def disk_free(self) -> int | None:
        if self.state_dir is None:
            return None
        try:
            st = os.statvfs(self.state_dir)
        except OSError:
            return None
        return disk_free_mb(st.f_bavail, st.f_frsize)


class Sampler:
    """One telemetry sample per call; cpu % over the time since the previous call."""

    def __init__(self, node: str, reader: ProcReader) -> None:
        self.node = node
        self.reader = reader
        self._prev: CpuTimes | None = None
        self.errors = 0

    def prime(self) -> None:
        """Take the first CPU reading so that the first sample covers one interval."""
        try:
            self._prev = self.reader.cpu_times()
        except (OSError, ValueError):
            self._prev = None

    def sample(self, ts: float, jobs: Sequence[JobSummary] = ()) -> Telemetry | None:
        """A Telemetry payload, or None (logged and counted) if /proc could not be read."""
        r = self.reader
        try:
            cur = r.cpu_times()
            pct = cpu_percent(self._prev, cur)
            self._prev = cur
            tele = build_telemetry(
                node=self.node,
                ts=ts,
                load1=r.load1(),
                cpu_pct=pct,
                mem=r.meminfo(),
                temp_c=r.temperature(),
                disk_free=r.disk_free(),
                jobs=jobs,
            )
        except (OSError, ValueError) as exc:
            self.errors += 1
            log.warning("cannot sample telemetry: %s", exc, extra={"node": self.node})
            return None
        return tele
