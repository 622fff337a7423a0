"""A real OCI registry (Debian's docker-registry) on loopback, and a small busybox image pushed to it.

The image is built here from busybox-static with umoci and copied into the registry with skopeo,
the same tools the node uses to pull it back.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

APPLETS = ("sh", "echo", "cat", "env", "ls", "sleep", "true", "false")
MARKER = "only-in-the-test-image"


def busybox_rootfs(root: Path, marker: str = MARKER, applets: tuple[str, ...] = APPLETS) -> Path:
    """A root filesystem with busybox-static, a few applets and /etc/marker."""
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in applets:
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "marker").write_text(marker + "\n")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Registry:
    host: str  # "127.0.0.1:PORT"

    def push_busybox(
        self, work: Path, name: str, marker: str = MARKER, applets: tuple[str, ...] = APPLETS
    ) -> str:
        """Build a busybox image with ``marker`` in /etc/marker, push it, return its reference."""
        layout, bundle = work / "layout", work / "bundle"
        run = lambda *argv: subprocess.run(argv, check=True, capture_output=True, timeout=60)  # noqa: E731
        run("umoci", "init", "--layout", str(layout))
        run("umoci", "new", "--image", f"{layout}:1")
        run("umoci", "unpack", "--image", f"{layout}:1", str(bundle))
        shutil.rmtree(bundle / "rootfs")
        busybox_rootfs(bundle / "rootfs", marker, applets)
        run("umoci", "repack", "--image", f"{layout}:1", str(bundle))
        run("umoci", "config", "--image", f"{layout}:1", "--config.env=IMAGE_VAR=from-image")
        reference = f"{self.host}/{name}"
        run(
            "skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
            f"oci:{layout}:1", f"docker://{reference}",
        )  # fmt: skip
        return reference


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry not installed: run `make setup`")
    work = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.communicate()[1].decode(errors="replace")
                raise RuntimeError(f"docker-registry on port {port} did not start: {err}")
            time.sleep(0.1)
        yield Registry(f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
