"""The node image, built for real (`scalerunner images build`, as make setup does) and booted.

The layers come from make setup's cache (.cache/node-image/layers): the Debian layer is reused
while its inputs are unchanged (else rebuilt, one to two minutes), the agent layer is built from
a snapshot of the checkout in seconds. Checked: the manifest against the files; the root it
unpacks to (python3 and the agent run in it, the coordinator's dependencies are not there); and
the whole path: `images build --add` puts the image in a real coordinator's registry, `images
promote` makes it the nodes', and two VMs boot it (QEMU TCG, user networking: the host's loopback
is 10.0.2.2): one with -kernel/-initrd/-append, the test playing iPXE's part over HTTP (the
node's script from the boot server, its kernel command line with the one-time token, the files
from its URLs), one network-booted by QEMU's own iPXE. In each the agent trades its token,
connects to the coordinator's mosquitto, and the node goes online; no password is in any file a
VM gets, and a spent token is refused. The first node then runs a job (the process runtime).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from scalerunner import __version__
from scalerunner.coordinator.app import Coordinator
from scalerunner.coordinator.inventory import loads_inventory
from scalerunner.imagebuild import BuildResult, Manifest, build_image
from tests.integration.netboot_fixtures import RunningCoordinator, boot_inventory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "node-image"
QEMU = shutil.which("qemu-system-x86_64")
SCALERUNNER = Path(sys.executable).parent / "scalerunner"
NODE, MAC = "img-01", "52:54:00:c0:0c:01"  # booted with -kernel/-initrd
NODE2, MAC2 = "img-02", "52:54:00:c0:0c:02"  # booted by iPXE
ONLINE = ("online", "idle", "busy")
BOOT_TIMEOUT = 150.0  # s: under TCG the node measured online in about 35 s


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of the checkout: others edit it while these tests run, and the agent layer's key
    is its content, so the module's builds all see the same files."""
    snap = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, snap / name)
    shutil.copytree(REPO / "scalerunner", snap / "scalerunner", ignore=shutil.ignore_patterns("__pycache__"))
    return snap


@pytest.fixture(scope="module")
def image(source: Path, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The image in a directory of the module's own (layers from make setup's cache: usually only
    the agent layer is built, in seconds)."""
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap missing: run make setup (tools/apt-packages.txt)")
    return build_image("amd64", tmp_path_factory.mktemp("image"), cache_dir=CACHE / "layers", source=source)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifest_names_both_files_by_sha256_with_every_package_version_and_the_initrd_is_small(
    image: BuildResult,
) -> None:
    m: Manifest = image.manifest
    assert (m.arch, m.suite, m.python, m.agent_version) == ("amd64", "bookworm", "3.11", __version__)
    for name, path in (("vmlinuz", image.kernel), ("initrd.img", image.initrd)):
        assert m.file(name).sha256 == _sha256(path) and m.file(name).size == path.stat().st_size
    for pkg in ("python3", "busybox", "kmod", "ca-certificates", "mount", m.kernel.package):
        assert pkg in m.packages, pkg
    assert m.kernel.package == f"linux-image-{m.kernel.release}"
    assert m.packages[m.kernel.package] == m.kernel.version
    # minbase's apt and usrmerge's perl stay out; the coordinator's Python side too
    assert not {"apt", "perl", "usrmerge", "initramfs-tools", "udev"} & set(m.packages)
    assert {"aiomqtt", "msgspec", "httpx", "paho-mqtt"} <= set(m.python_packages)
    assert not {"fastapi", "uvicorn", "pysnmp", "aiohttp"} & set(m.python_packages)
    # two layers back to back; the file padded to 4 bytes so a node's settings archive may follow
    assert [la.name for la in m.layers] == ["base", "agent"]
    assert m.layers[0].offset == 0 and m.layers[1].offset == m.layers[0].size
    assert m.file("initrd.img").size % 4 == 0
    assert m.file("initrd.img").size < 80_000_000, "the initrd grew past 80 MB"
    assert "console=ttyS0" in m.cmdline


def test_a_second_build_with_the_same_inputs_reuses_the_output(image: BuildResult, source: Path) -> None:
    started = time.monotonic()
    again = build_image("amd64", image.out_dir, cache_dir=CACHE / "layers", source=source)
    assert again.reused and again.manifest == image.manifest
    assert time.monotonic() - started < 30


@pytest.fixture(scope="module")
def root(image: BuildResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The initrd unpacked as the kernel does: each layer in order, over the one before."""
    top = tmp_path_factory.mktemp("root")
    data = image.initrd.read_bytes()
    for layer in image.manifest.layers:
        archive = data[layer.offset : layer.offset + layer.size]
        cpio = subprocess.run(["zstd", "-dc"], input=archive, capture_output=True, check=True).stdout
        subprocess.run(
            ["cpio", "-idm", "--quiet", "--no-absolute-filenames", "--unconditional"],
            input=cpio,
            cwd=top,
            check=True,
        )
    yield top
    shutil.rmtree(top, ignore_errors=True)


def _chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin") or "chroot"
    return subprocess.run([chroot, str(root), *argv], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_python3_and_the_agent_run_inside_the_unpacked_root(image: BuildResult, root: Path) -> None:
    probe = (
        "import scalerunner, scalerunner.nodeagent.cli, scalerunner.nodeagent.bench.cli, httpx, aiomqtt;"
        "print(scalerunner.__version__, scalerunner.__file__)"
    )
    done = _chroot(root, "/usr/bin/python3", "-c", probe)
    assert done.returncode == 0, done.stderr
    version, where = done.stdout.split()
    assert version == __version__
    assert where == "/usr/local/lib/python3.11/dist-packages/scalerunner/__init__.py"
    agent = _chroot(root, "/usr/local/bin/scalerunner-agent", "--version")
    assert agent.returncode == 0 and __version__ in agent.stdout, agent.stderr
    coordinator_side = _chroot(root, "/usr/bin/python3", "-c", "import fastapi")
    assert coordinator_side.returncode == 1 and "No module named 'fastapi'" in coordinator_side.stderr
    # what /init needs: itself, busybox init's table, the NIC driver and modules.dep for modprobe
    assert os.access(root / "init", os.X_OK)
    assert "run-agent" in (root / "etc/inittab").read_text()
    modules = root / "usr/lib/modules" / image.manifest.kernel.release
    assert (modules / "modules.dep").is_file()
    assert list(modules.glob("kernel/drivers/net/virtio_net.ko*"))
    assert (root / "etc/scalerunner/image-version").read_text().startswith("scalerunner-node amd64 bookworm")
    assert not (root / "boot" / image.manifest.kernel.release).exists() and not list(
        (root / "boot").iterdir()
    )


def _script_parts(script: str, base: str, local: str) -> tuple[list[str], str]:
    """(URLs of the kernel and initrds, kernel arguments) of an iPXE node script; the URLs rewritten
    from the address the VM uses (``base``) to the one this process reaches (``local``)."""
    urls: list[str] = []
    args = ""
    for line in script.splitlines():
        words = line.split(" ", 2)
        if words[0] == "kernel":
            urls.append(words[1])
            args = words[2] if len(words) > 2 else ""
        elif words[0] == "initrd":
            urls.append(words[1])
    return [u.replace(base, local, 1) for u in urls], args


@dataclass
class Registered:
    coord: RunningCoordinator
    out_dir: Path  # what `images build` wrote

    @property
    def vm_base(self) -> str:  # the boot server as the VM reaches it
        assert self.coord.c.boot is not None
        return f"http://10.0.2.2:{self.coord.c.boot.port}"


@pytest.fixture(scope="module")
def registered(image: BuildResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    """A coordinator with [boot] enabled whose boot server reads its own image registry, into
    which `images build --add` put the image, promoted to the nodes' group by `images promote`."""
    if QEMU is None:
        pytest.fail("qemu-system-x86_64 missing: run make setup")
    directory = tmp_path_factory.mktemp("coord")
    text = boot_inventory("lab", [(NODE, MAC), (NODE2, MAC2)], advertise="10.0.2.2")
    path = directory / "scalerunner.toml"
    path.write_text(text)
    inventory = loads_inventory(text, path)
    run = RunningCoordinator(Coordinator(inventory, directory / "state", source=str(path), api_port=0))
    run._thread.start()
    try:
        run.call(run.c.start())
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCALERUNNER_")}
        api = ["--url", run.c.api_url, "--token", run.c.token]
        out_dir = directory / "image"
        build = [str(SCALERUNNER), "images", "build", "--arch", "amd64", "-o", str(out_dir)]
        build += ["--cache-dir", str(CACHE / "layers"), "--add", "node-os", "1", *api]
        done = subprocess.run(build, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0 and done.stdout == "node-os 1\n", done.stderr[-3000:]
        promote = [str(SCALERUNNER), "images", "promote", "node-os", "1", "--group", "default", *api]
        done = subprocess.run(promote, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        yield Registered(run, out_dir)
    finally:
        try:
            run.call(run.c.stop())
        finally:
            run.loop.call_soon_threadsafe(run.loop.stop)
            run._thread.join(10)


@contextmanager
def _online(coord: RunningCoordinator, node: str, argv: list[str], console: Path) -> Iterator[str]:
    """QEMU running until ``node`` is online, then the body (the VM still up); the console's text."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        state = ""
        while time.monotonic() - started < BOOT_TIMEOUT:
            state = coord.node_state(node)
            if state in ONLINE or proc.poll() is not None:
                break
            time.sleep(0.5)
        took = time.monotonic() - started
        out = console.read_text(errors="replace") if console.exists() else ""
        assert state in ONLINE, f"node {node} is {state} after {took:.0f} s; console:\n{out[-4000:]}"
        print(f"\n{node}: QEMU start to online {took:.1f} s (TCG)")
        for step in (
            f"scalerunner-init: node {node}",
            "scalerunner-init: network: eth0 10.0.2.15/24 via 10.0.2.2",
            "scalerunner-init: scalerunner-agent starting",
        ):
            assert step in out, out[-4000:]
        yield out
    finally:
        proc.kill()
        proc.wait()


def _token_was_traded_and_is_spent(registered: Registered, node: str, token: str) -> None:
    coord = registered.coord
    reasons = [e["new"] for e in coord.events() if e["node"] == node and e["axis"] == "boot"]
    assert "token-traded" in reasons, reasons
    with httpx.Client(timeout=10) as http:
        again = http.post(f"{coord.boot_url}/boot/v1/credentials", json={"node": node, "token": token})
    assert again.status_code == 403


def _qemu(console: Path, mac: str, *boot: str, netdev: str = "user,id=n0") -> list[str]:
    return [
        str(QEMU),
        "-machine", "q35,accel=tcg", "-m", "512", "-smp", "1",
        "-display", "none", "-no-reboot", "-serial", f"file:{console}",
        "-netdev", netdev, "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
        *boot,
    ]  # fmt: skip


@pytest.mark.vm
def test_a_vm_given_the_boot_servers_kernel_and_initrds_trades_its_token_and_goes_online(
    registered: Registered, tmp_path: Path
) -> None:
    local = registered.coord.boot_url
    with httpx.Client(timeout=30) as http:
        script = http.get(f"{local}/boot/ipxe", params={"mac": MAC}).raise_for_status().text
        urls, args = _script_parts(script, registered.vm_base, local)
        assert len(urls) == 3, script  # kernel, the image's initrd, the node's settings
        files = [http.get(u).raise_for_status().content for u in urls]
    token = re.search(r"scalerunner\.token=(\S+)", args)
    assert token and f"scalerunner.node={NODE}" in args and f"scalerunner.url={registered.vm_base}" in args
    assert "console=ttyS0" in args  # the manifest's cmdline became the image's template
    assert files[0] == (registered.out_dir / "vmlinuz").read_bytes()
    assert files[1] == (registered.out_dir / "initrd.img").read_bytes()
    assert b"password =" not in files[2] and b"password_file" not in files[2]
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(files[0])
    initrd = tmp_path / "initrd"  # as iPXE hands them over: one after the other
    initrd.write_bytes(files[1] + files[2])
    console = tmp_path / "console.log"
    argv = _qemu(console, MAC, "-kernel", str(kernel), "-initrd", str(initrd), "-append", args)
    with _online(registered.coord, NODE, argv, console):
        _token_was_traded_and_is_spent(registered, NODE, token.group(1))
        # and it is a compute node: a job runs there (the agent's process runtime, in the image)
        coord = registered.coord
        with coord.api() as api:
            health = {"health": "good", "reason": "test"}
            api.put(f"/api/v1/nodes/{NODE}/health", json=health).raise_for_status()
        cli = [str(SCALERUNNER), "jobs"]
        auth = ["--url", coord.c.api_url, "--token", coord.c.token]
        job = 'echo "hello from $(hostname), python $(python3 -c "import sys; print(sys.version_info[1])")"'
        submit = [*cli, "submit", "--label", "netboot", "--timeout", "60", *auth, "--", "sh", "-c", job]
        done = subprocess.run(submit, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip()
        done = subprocess.run(
            [*cli, "wait", job_id, "--timeout", "60", *auth], capture_output=True, text=True
        )
        logs = subprocess.run([*cli, "logs", job_id, *auth], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{done.stderr}\n{logs.stdout}\n{logs.stderr}"
        assert logs.stdout == f"hello from {NODE}, python 11\n", logs.stderr
        assert "no usable cgroups" not in console.read_text(errors="replace")  # init mounted cgroup2


@pytest.mark.vm
def test_a_vm_that_network_boots_with_ipxe_runs_the_image_and_goes_online(
    registered: Registered, tmp_path: Path
) -> None:
    """The whole path: QEMU's DHCP names the boot server's iPXE URL, iPXE fetches the script,
    the kernel and both initrds over HTTP, and boots them."""
    console = tmp_path / "console.log"
    bootfile = f"{registered.vm_base}/boot/ipxe?mac={MAC2}"
    argv = _qemu(console, MAC2, "-boot", "n", netdev=f"user,id=n0,bootfile={bootfile}")
    with _online(registered.coord, NODE2, argv, console) as out:
        token = re.search(r"Command line: .*scalerunner\.token=(\S+)", out)
        assert token, out[-4000:]
        _token_was_traded_and_is_spent(registered, NODE2, token.group(1))


def test_the_agent_layer_is_the_same_bytes_when_built_twice_from_the_same_checkout(
    image: BuildResult, source: Path, tmp_path: Path
) -> None:
    from scalerunner.imagebuild import builder

    info = builder._base_info(CACHE / "layers" / f"base-amd64-{image.manifest.base_key[:16]}")
    assert info is not None
    files = builder._source_files(source)
    digests = []
    for i in range(2):
        out = tmp_path / f"agent-{i}.cpio.zst"
        builder._build_agent(source, files, info, out, "id", info.source_date_epoch, builder.NullReporter())
        digests.append(_sha256(out))
    assert digests[0] == digests[1]
