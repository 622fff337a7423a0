"""A job's hardware-in-the-loop part: ``scalerunner-bench check`` after the job's command.

Functional core: ``bitstream_path`` (the bitstream, confined to the work directory),
``checks_document`` (the spec's checks as the bench's JSON checks file) and ``bench_argv``.
Shell: ``run_bench`` runs the bench as a subprocess of the agent, on the host, not in the job's
runtime: it needs the node's USB cables (openFPGALoader) and GPIO lines (/dev/gpiochip*), which a
job's namespaces or VM do not have, and it is the agent's own program, not the job's. Its output
goes to the job's log; exit 0 passes, 1 fails the job, 2 (a bench fault) is a ``BenchRunFault``:
the node's fault, so the coordinator runs the job again elsewhere. docs/bench.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from ...protocol.mqtt import HilRun
from ..runtime.base import JobEnd, JobResult, OutputSink, RuntimeFault, Stream

__all__ = [
    "BACKENDS",
    "CHECKS_FILE",
    "JUNIT_FILE",
    "BenchRunFault",
    "HilError",
    "bench_argv",
    "bench_result",
    "bitstream_path",
    "checks_document",
    "run_bench",
]

BACKENDS = ("gpiod", "sim")  # the bench's pin back ends an agent may be configured with
CHECKS_FILE = "checks.json"  # written into the work directory
JUNIT_FILE = "bench-junit.xml"  # in the work directory; always an artifact of a HIL job
EXIT_PASS, EXIT_FAIL, EXIT_FAULT = 0, 1, 2
READ_SIZE = 64 * 1024


class HilError(ValueError):
    """The job's hil part cannot be run as given (the job's fault: it fails, no retry)."""


class BenchRunFault(RuntimeFault):
    """The bench could not check the design (exit 2, or it would not start): the node's fault."""


def bitstream_path(work: Path, bitstream: str) -> Path:
    """``bitstream`` (relative) inside ``work``, symlinks resolved; HilError if it leaves ``work``."""
    if not bitstream or "\x00" in bitstream or Path(bitstream).is_absolute():
        raise HilError(f"hil.bitstream {bitstream!r} must be a path relative to the job's work directory")
    root = work.resolve()
    path = (root / bitstream).resolve()
    if not path.is_relative_to(root):
        raise HilError(f"hil.bitstream {bitstream!r} leads out of the job's work directory")
    return path


def checks_document(hil: HilRun) -> bytes:
    """The checks file the bench reads (its TOML schema, as JSON): ``{"checks": [...], "sim": {}}``."""
    doc: dict[str, object] = {"checks": hil.checks}
    if hil.sim is not None:
        doc["sim"] = hil.sim
    return json.dumps(doc, indent=1).encode()


def bench_argv(
    hil: HilRun, bitstream: Path, checks: Path, junit: Path, *, backend: str, boards_dir: Path | None
) -> list[str]:
    """The bench command, run by this agent's Python (the bench ships with the agent)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown bench back end {backend!r}, expected one of {', '.join(BACKENDS)}")
    argv = [sys.executable, "-c", "from scalerunner.nodeagent.bench.cli import main; main()", "check"]
    argv += ["--board", hil.board, "--bitstream", str(bitstream), "--checks", str(checks)]
    argv += ["--junit", str(junit), "--backend", backend]
    if boards_dir is not None:
        argv += ["--boards-dir", str(boards_dir)]
    return argv


def bench_result(job: str, board: str, code: int) -> JobResult:
    """How the bench's exit code ends the job; BenchRunFault for a bench fault."""
    if code == EXIT_PASS:
        return JobResult(JobEnd.EXITED, 0)
    if code == EXIT_FAIL:
        return JobResult(JobEnd.EXITED, 1, f"bench checks failed on {board} ({JUNIT_FILE})")
    raise BenchRunFault(job, f"bench fault on {board} (scalerunner-bench exit {code}, see the log)")


async def run_bench(
    job: str, hil: HilRun, work: Path, sink: OutputSink, *, backend: str, boards_dir: Path | None
) -> JobResult:
    """Write the checks file, run the bench in ``work``, feed its output to ``sink``."""
    bitstream = bitstream_path(work, hil.bitstream)
    if not bitstream.is_file():
        raise HilError(f"hil.bitstream {hil.bitstream!r} is not a file in the job's work directory")
    checks = work / CHECKS_FILE
    checks.write_bytes(checks_document(hil))
    argv = bench_argv(hil, bitstream, checks, work / JUNIT_FILE, backend=backend, boards_dir=boards_dir)
    sink("stderr", f"scalerunner-bench check --board {hil.board} --bitstream {hil.bitstream}\n".encode())
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=work,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise BenchRunFault(job, f"cannot start scalerunner-bench: {exc.strerror or exc}") from exc

    async def pump(stream: asyncio.StreamReader | None, which: Stream) -> None:
        assert stream is not None
        while data := await stream.read(READ_SIZE):
            sink(which, data)

    try:
        await asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
        code = await proc.wait()
    finally:
        if proc.returncode is None:  # cancelled (the cancel command, the timeout): the bench goes too
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return bench_result(job, hil.board, code)
