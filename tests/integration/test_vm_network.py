"""Guest networking in the vm runtime: a job that asks for network reaches an HTTP server on the
node's loopback through QEMU's user-mode network (10.0.2.2, the URL in its env rewritten to it);
a job that does not ask has no NIC at all. Real TCG guests, a real HTTP server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scalerunner.nodeagent.runtime.base import JobEnd, JobRun
from scalerunner.nodeagent.runtime.vm import VmConfig, VmRuntime
from tests.integration.oci_fixtures import busybox_rootfs

pytestmark = [pytest.mark.slow, pytest.mark.vm]

BODY = b"served-from-the-node's-loopback\n"


class Output:
    def __init__(self) -> None:
        self.streams: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def __call__(self, stream: str, data: bytes) -> None:
        self.streams[stream] += data

    def text(self, stream: str) -> str:
        return self.streams[stream].decode(errors="replace")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_rootfs(tmp_path_factory.mktemp("vmnet") / "rootfs")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 only; yields its URL and the client addresses it saw."""
    clients: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            clients.append(self.client_address[0])
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hello", clients
    finally:
        httpd.shutdown()
        httpd.server_close()


# The interfaces from /proc/net/dev (the job has no /sys). No `wget -T`: busybox 1.35's
# static build segfaults with it (checked on the host too).
SCRIPT = (
    'echo "url $URL"; cat /etc/resolv.conf 2>/dev/null;'
    " busybox sed -n 's/^ *\\([a-z0-9]*\\):.*/\\1/p' /proc/net/dev | busybox sort"
    " | busybox tr '\\n' ' '; echo;"
    ' busybox wget -q -O - "$URL"'
)


def run(rootfs: Path, tmp_path: Path, url: str, network: bool) -> tuple[JobEnd, int, Output]:
    out = Output()
    job = JobRun(
        job="job-net-1",
        attempt=1,
        argv=("sh", "-c", SCRIPT),
        env={"URL": url},
        rootfs=rootfs,
        workdir=tmp_path / "work",
        timeout_s=120,
        network=network,
    )
    scratch = tmp_path / "scratch"
    result = asyncio.run(VmRuntime(VmConfig(accel="tcg", scratch_dir=scratch)).run(job, out))
    assert not any(scratch.iterdir()), "scratch left behind"
    return result.end, result.exit_code, out


def test_a_job_with_network_fetches_from_the_nodes_loopback_through_the_rewritten_url(
    rootfs: Path, tmp_path: Path, server: tuple[str, list[str]]
) -> None:
    url, clients = server
    end, code, out = run(rootfs, tmp_path, url, network=True)
    assert (end, code) == (JobEnd.EXITED, 0), out.text("stderr")
    port = url.split(":")[2].split("/")[0]
    lines = out.text("stdout").splitlines()
    # the env's loopback URL points at the node from inside; the resolver is slirp's; eth0 and lo
    assert lines[0] == f"url http://10.0.2.2:{port}/hello", lines
    assert lines[1] == "nameserver 10.0.2.3", lines
    assert lines[2].split() == ["eth0", "lo"], lines
    assert "\n".join(lines[3:]) + "\n" == BODY.decode()
    assert clients and clients[-1] == "127.0.0.1", "QEMU's NAT connects from the node's loopback"


def test_a_job_without_network_has_no_nic_and_cannot_reach_the_node(
    rootfs: Path, tmp_path: Path, server: tuple[str, list[str]]
) -> None:
    _, clients = server
    seen = len(clients)
    end, code, out = run(rootfs, tmp_path, "http://10.0.2.2:80/hello", network=False)
    assert end is JobEnd.EXITED and code != 0, out.text("stdout")
    lines = out.text("stdout").splitlines()
    assert lines[0] == "url http://10.0.2.2:80/hello"
    assert lines[1].split() == ["lo"], lines  # no resolv.conf written, no eth0
    assert BODY.decode() not in out.text("stdout")
    assert "wget" in out.text("stderr"), out.text("stderr")
    assert len(clients) == seen
