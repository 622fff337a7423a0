"""The image registry end to end: `scalerunner up` (real mosquitto, real HTTP), the
`scalerunner images` CLI as a process, the REST API over httpx, and the boot HTTP server
resolving what a node boots.

One coordinator serves the module; the tests run in order (add, promote, rollback, remove,
restart) and each leaves the registry as the next expects.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_api_spec import conforms
from tests.integration.test_coordinator import MOSQUITTO, N1, N2, SCALERUNNER, Cluster

pytestmark = pytest.mark.slow

KERNEL_MB = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageCluster(Cluster):
    """The coordinator harness with the boot HTTP server on, and image files to add."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.boot_port = free_port()
        with self.inventory.open("a") as f:
            f.write(f'\n[boot]\nenabled = true\nlisten = "127.0.0.1:{self.boot_port}"\n')
        self.files = root / "files"
        (self.files / "fw").mkdir(parents=True)
        self.kernel = self.files / "vmlinuz"
        self.kernel.write_bytes(os.urandom(KERNEL_MB << 20))
        self.initrd = self.files / "initrd.img"
        self.initrd.write_bytes(os.urandom(300_000))
        self.dtb = self.files / "bcm2711-rpi-4-b.dtb"
        self.dtb.write_bytes(b"\xd0\x0d\xfe\xed" + os.urandom(1000))
        for name in ("start4.elf", "fixup4.dat"):
            (self.files / "fw" / name).write_bytes(os.urandom(2000))

    def images(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(SCALERUNNER), "images", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
        )
        return done

    def ok(self, *args: str) -> str:
        done = self.images(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def ipxe(self, mac: str) -> str:
        resp = httpx.get(f"http://127.0.0.1:{self.boot_port}/boot/ipxe/{mac}", timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.text

    def blob(self, digest: str) -> Path:
        return self.state / "images" / "blobs" / "sha256" / digest


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageCluster]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    c = ImageCluster(tmp_path_factory.mktemp("images"))
    try:
        c.start_coordinator()
        yield c
    finally:
        c.close()


def by_key(images: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(i["name"], i["version"], i["arch"]): i for i in images}


def test_add_uploads_a_multi_mb_kernel_with_progress_and_stores_read_only_blobs(
    cluster: ImageCluster,
) -> None:
    c = cluster
    out = c.ok(
        "add", "node", "1.0", "--arch", "amd64",
        "--kernel", str(c.kernel), "--initrd", str(c.initrd),
        "--cmdline", "console=ttyS0 {node}",
    )  # fmt: skip
    assert out == "node 1.0\n"
    kernel = c.kernel.read_bytes()
    path = c.blob(sha(kernel))
    assert path.read_bytes() == kernel
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert os.listdir(c.state / "images" / "blobs" / "tmp") == []
    # a Pi build: dtb and a firmware directory; the shared initrd is not uploaded again
    done = c.images(
        "add", "node", "1.0", "--arch", "arm64", "--kernel", str(c.kernel), "--initrd", str(c.initrd),
        "--dtb", str(c.dtb), "--firmware", str(c.files / "fw"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "upload vmlinuz" not in done.stderr and "hash   vmlinuz" in done.stderr  # progress on stderr
    images = by_key(c.cli_json("images", "ls"))
    arm = images[("node", "1.0", "arm64")]
    assert [(f["name"], f["role"]) for f in arm["files"]] == [
        ("vmlinuz", "kernel"),
        ("initrd.img", "initrd"),
        ("bcm2711-rpi-4-b.dtb", "dtb"),
        ("fixup4.dat", "firmware"),
        ("start4.elf", "firmware"),
    ]
    assert images[("node", "1.0", "amd64")]["size"] == (KERNEL_MB << 20) + 300_000
    assert images[("node", "1.0", "amd64")]["cmdline"] == "console=ttyS0 {node}"
    missing = c.api("POST", "/api/v1/images/blobs/missing", json={"digests": [sha(kernel), "f" * 64]})
    assert missing.json() == {"missing": ["f" * 64]}


def test_promote_makes_the_boot_server_serve_that_version_and_rollback_goes_back(
    cluster: ImageCluster,
) -> None:
    c = cluster
    first_kernel = sha(c.kernel.read_bytes())
    assert "no image" in c.ipxe("02:00:00:00:00:01").lower()  # nothing promoted yet
    c.ok("promote", "node", "1.0", "--group", "default")
    script = c.ipxe("02:00:00:00:00:01")
    assert f"/boot/files/{first_kernel}/vmlinuz" in script
    c.kernel.write_bytes(os.urandom(KERNEL_MB << 20))  # version 2.0: a new kernel
    c.ok("add", "node", "2.0", "--arch", "amd64", "--kernel", str(c.kernel), "--initrd", str(c.initrd))
    c.ok("promote", "node", "2.0", "--group", "default")
    assert f"/boot/files/{sha(c.kernel.read_bytes())}/vmlinuz" in c.ipxe("02:00:00:00:00:01")
    shown = c.cli_json("images", "show", "node")
    assert [(p["arch"], p["version"]) for p in shown["history"]] == [
        ("amd64", "1.0"),
        ("amd64", "2.0"),
        ("arm64", "1.0"),
    ]
    done = c.images("rollback", "node", "--group", "default", "--arch", "amd64")
    assert done.returncode == 0, done.stderr
    assert "default (amd64) boots node 1.0" in done.stderr
    assert f"/boot/files/{first_kernel}/vmlinuz" in c.ipxe("02:00:00:00:00:01")
    # a per-node override wins over the group
    c.ok("promote", "node", "2.0", "--node", N1)
    assert "/vmlinuz" in c.ipxe("02:00:00:00:00:01") and first_kernel not in c.ipxe("02:00:00:00:00:01")
    done = c.images("promote", "node", "2.0", "--node", N2)  # N2 is arm64, 2.0 has no arm64 build
    assert done.returncode == 1 and f"node {N2} is arm64" in done.stderr
    c.ok("promote", "node", "1.0", "--node", N2)
    listed = {k: i["overridden_for"] for k, i in by_key(c.cli_json("images", "ls")).items()}
    assert listed == {
        ("node", "1.0", "amd64"): [],
        ("node", "1.0", "arm64"): [N2],  # the build N2 boots, not every arch of the version
        ("node", "2.0", "amd64"): [N1],
    }
    c.ok("clear-override", N2)
    c.ok("clear-override", N1)
    assert f"/boot/files/{first_kernel}/vmlinuz" in c.ipxe("02:00:00:00:00:01")
    changes = [(e["old"], e["new"]) for e in c.events(N1) if e["axis"] == "image"]
    assert changes == [
        ("none", "node 1.0"),
        ("node 1.0", "node 2.0"),
        ("node 2.0", "node 1.0"),  # the rollback
        ("node 1.0", "node 2.0"),  # the override
        ("node 2.0", "node 1.0"),  # cleared
    ]


def test_rm_is_refused_while_promoted_and_removes_unshared_blobs_otherwise(cluster: ImageCluster) -> None:
    c = cluster
    done = c.images("rm", "node", "1.0")
    assert done.returncode == 1
    assert "promoted to group default" in done.stderr and "node 1.0" in done.stderr
    second_kernel = sha(c.kernel.read_bytes())
    assert c.blob(second_kernel).exists()
    done = c.images("rm", "node", "2.0")  # rolled back: only in the history, so it may go
    assert done.returncode == 0, done.stderr
    assert not c.blob(second_kernel).exists()
    assert c.blob(sha(c.initrd.read_bytes())).exists()  # 1.0 still uses it
    done = c.images("rm", "node", "2.0")
    assert done.returncode == 1 and "has no version 2.0" in done.stderr


def test_a_tampered_upload_is_refused_and_nothing_of_it_kept(cluster: ImageCluster) -> None:
    c = cluster
    data = os.urandom(100_000)
    resp = c.api("PUT", f"/api/v1/images/blobs/{sha(data)}", content=data[:-1] + b"\0")
    assert resp.status_code == 422 and "sha256 is" in resp.json()["error"], resp.text
    assert not c.blob(sha(data)).exists()
    assert os.listdir(c.state / "images" / "blobs" / "tmp") == []
    resp = c.api("PUT", f"/api/v1/images/blobs/{sha(data)}", content=data)
    assert resp.status_code == 201 and resp.json()["size"] == len(data)
    again = c.api("PUT", f"/api/v1/images/blobs/{sha(data)}", content=data)
    assert again.status_code == 200 and again.json()["created"] is False
    assert c.api("PUT", f"/api/v1/images/blobs/{sha(data)}", token="wrong", content=data).status_code == 401


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"name": "../../etc", "version": "1", "arch": "amd64"}, "image name '../../etc'"),
        ({"name": "node", "version": "../1", "arch": "amd64"}, "version '../1'"),
        ({"name": "node", "version": "1", "arch": "amd64", "file": "../vmlinuz"}, "file name '../vmlinuz'"),
        ({"name": "node", "version": "1", "arch": "amd64", "file": "a/b"}, "file name 'a/b'"),
    ],
)
def test_path_traversal_in_names_is_refused(cluster: ImageCluster, body: dict[str, str], says: str) -> None:
    c = cluster
    digest = sha(c.initrd.read_bytes())
    file = body.pop("file", "vmlinuz")
    resp = c.api(
        "POST", "/api/v1/images", json={**body, "files": [{"name": file, "role": "kernel", "sha256": digest}]}
    )
    assert resp.status_code == 422, resp.text
    assert says in resp.json()["error"]


def test_the_cli_refuses_bad_names_and_blob_paths_cannot_escape(cluster: ImageCluster) -> None:
    c = cluster
    done = c.images("add", "../x", "1", "--arch", "amd64", "--kernel", str(c.kernel))
    assert done.returncode == 2 and "image name '../x'" in done.stderr
    for path in ("/api/v1/images/blobs/..%2F..%2Fapi-token", "/api/v1/images/blobs/" + "A" * 64):
        resp = c.api("PUT", path, content=b"x")
        assert resp.status_code in (404, 422), (path, resp.text)
    assert c.api("GET", "/api/v1/images/..%2F..").status_code == 404


def test_a_restart_keeps_versions_promotions_and_blobs(cluster: ImageCluster) -> None:
    c = cluster
    before = c.cli_json("images", "ls")
    history = c.cli_json("images", "show", "node")["history"]
    c.kill_coordinator()  # kill -9: nothing is flushed on the way out
    c.start_coordinator()
    assert c.cli_json("images", "ls") == before
    assert c.cli_json("images", "show", "node")["history"] == history
    first_kernel = next(f["sha256"] for f in before[0]["files"] if f["role"] == "kernel")
    assert f"/boot/files/{first_kernel}/vmlinuz" in c.ipxe("02:00:00:00:00:01")
    resp = httpx.get(f"http://127.0.0.1:{c.boot_port}/boot/files/{first_kernel}/vmlinuz", timeout=30)
    assert resp.status_code == 200 and sha(resp.content) == first_kernel


def test_each_registry_error_is_documented_for_its_route_with_its_body(cluster: ImageCluster) -> None:
    c = cluster
    spec: dict[str, Any] = httpx.get(c.url + "/openapi.json", timeout=10).json()
    digest = sha(c.initrd.read_bytes())
    calls: list[tuple[str, str, str, dict[str, Any], int]] = [
        ("GET", "/api/v1/images/nope", "/api/v1/images/{name}", {}, 404),
        ("GET", "/api/v1/images/node/9.9", "/api/v1/images/{name}/{version}", {}, 404),
        ("DELETE", "/api/v1/images/node/1.0", "/api/v1/images/{name}/{version}", {}, 409),
        (
            "POST",
            "/api/v1/images/node/rollback",
            "/api/v1/images/{name}/rollback",
            {"json": {"group": "x"}},
            409,
        ),
        (
            "POST",
            "/api/v1/images/node/1.0/promote",
            "/api/v1/images/{name}/{version}/promote",
            {"json": {"group": "g", "node": N1}},
            422,
        ),
        (
            "POST",
            "/api/v1/images/node/1.0/promote",
            "/api/v1/images/{name}/{version}/promote",
            {"json": {"node": "ghost"}},
            404,
        ),
        ("PUT", f"/api/v1/images/blobs/{'0' * 64}", "/api/v1/images/blobs/{sha256}", {"content": b"x"}, 422),
        (
            "POST",
            "/api/v1/images",
            "/api/v1/images",
            {
                "json": {
                    "name": "n",
                    "version": "1",
                    "arch": "amd64",
                    "files": [{"name": "k", "role": "kernel", "sha256": "1" * 64}],
                }
            },
            409,
        ),
        (
            "POST",
            "/api/v1/images",
            "/api/v1/images",
            {
                "json": {
                    "name": "n",
                    "version": "1",
                    "arch": "x",
                    "files": [{"name": "k", "role": "kernel", "sha256": digest}],
                }
            },
            422,
        ),
        (
            "POST",
            "/api/v1/images/blobs/missing",
            "/api/v1/images/blobs/missing",
            {"json": {"digests": ["x"]}},
            422,
        ),
        ("DELETE", "/api/v1/image-overrides/ghost", "/api/v1/image-overrides/{node}", {}, 404),
    ]
    for method, path, template, kwargs, status in calls:
        resp = c.api(method, path, **kwargs)
        assert resp.status_code == status, (method, path, resp.text)
        responses = spec["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, (method, template, status)
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        assert conforms(resp.json(), schema, spec) == [], (method, path, resp.json())
