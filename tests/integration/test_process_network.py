"""The process runtime's network: a job without ``network`` is alone with ``lo``; with it, it
shares the node's network (real namespaces, a real TCP server on the host's loopback)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scalerunner.nodeagent.runtime.base import JobEnd, JobResult, JobRun
from scalerunner.nodeagent.runtime.process import ProcessRuntime

pytestmark = pytest.mark.slow

# Connects to the host's server on 127.0.0.1:PORT and says hello; prints why it could not.
CONNECT = """
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
        s.sendall(b"hello from the job")
    print("connected")
except OSError as exc:
    print("refused" if isinstance(exc, ConnectionRefusedError) else f"error {exc!r}")
"""

# A server and a client of its own on 127.0.0.1: works only if lo is up.
SELF_TALK = """
import socket
with socket.socket() as srv:
    srv.bind(("127.0.0.1", 0)); srv.listen()
    with socket.create_connection(srv.getsockname(), timeout=5) as c, srv.accept()[0] as peer:
        c.sendall(b"ping"); print(peer.recv(4).decode())
"""


class Collect:
    def __init__(self) -> None:
        self.out = bytearray()

    def __call__(self, stream: str, data: bytes) -> None:
        if stream == "stdout":
            self.out += data


class HostServer:
    """A TCP server on the host's 127.0.0.1 that records what each connection sent."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.got: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(5)
                self.got.append(conn.recv(100))

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close alone does not)
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def host_server() -> Iterator[HostServer]:
    srv = HostServer()
    yield srv
    srv.close()


def run(tmp_path: Path, *argv: str, **kw: object) -> tuple[JobResult, str]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    j = JobRun(job="jn", attempt=1, argv=argv, workdir=work, timeout_s=60, **kw)  # type: ignore[arg-type]
    sink = Collect()
    res = asyncio.run(ProcessRuntime().run(j, sink))
    return res, sink.out.decode()


def interfaces(proc_net_dev: str) -> set[str]:
    """Interface names from /proc/net/dev's text (two header lines, then "name: counters")."""
    return {line.split(":", 1)[0].strip() for line in proc_net_dev.splitlines()[2:] if ":" in line}


def test_without_network_a_job_cannot_reach_the_hosts_loopback_and_sees_only_lo(
    tmp_path: Path, host_server: HostServer
) -> None:
    res, out = run(tmp_path, sys.executable, "-c", CONNECT, str(host_server.port))
    assert res == JobResult(JobEnd.EXITED, 0)
    assert out == "refused\n"  # nothing listens on the namespace's own 127.0.0.1
    assert host_server.got == []
    res, out = run(tmp_path, "/bin/cat", "/proc/net/dev")
    assert res.exit_code == 0 and interfaces(out) == {"lo"}


def test_without_network_lo_is_up_so_a_job_can_talk_to_itself(tmp_path: Path) -> None:
    res, out = run(tmp_path, sys.executable, "-c", SELF_TALK)
    assert (res.exit_code, out) == (0, "ping\n")


def test_with_network_a_job_reaches_the_hosts_loopback_and_sees_its_interfaces(
    tmp_path: Path, host_server: HostServer
) -> None:
    res, out = run(tmp_path, sys.executable, "-c", CONNECT, str(host_server.port), network=True)
    assert (res.exit_code, out) == (0, "connected\n")
    assert host_server.got == [b"hello from the job"]
    res, out = run(tmp_path, "/bin/cat", "/proc/net/dev", network=True)
    assert interfaces(out) == interfaces(Path("/proc/net/dev").read_text())


def test_without_ip_the_setup_brings_lo_up_with_busybox(tmp_path: Path) -> None:
    # The node image has busybox but no iproute2: a PATH without `ip` takes the other branch.
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("no busybox on this machine")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mount", "unshare"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, bin_dir / tool)
    os.symlink(busybox, bin_dir / "busybox")
    res, out = run(tmp_path, sys.executable, "-c", SELF_TALK, env={"PATH": str(bin_dir)})
    assert (res.exit_code, out) == (0, "ping\n")
