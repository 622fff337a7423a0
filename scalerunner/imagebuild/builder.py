"""``build_image``: a RAM-bootable node image (``vmlinuz``, ``initrd.img``, ``manifest.json``).

The shell around ``spec``: it runs mmdebstrap, pip, cpio and zstd, caches both layers under
``cache_dir`` by their keys, and reports its stages to a ``Reporter`` (the CLI draws them with
rich). One build at a time per cache directory (a lock file); the output files are replaced
atomically, the manifest last, so a reader never sees a manifest for files that are not there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Protocol

import msgspec

from .. import __version__
from ..atomic import fsync_dir
from .manifest import MANIFEST, ImageFile, KernelInfo, Layer, Manifest, read_manifest, write_manifest
from .spec import (
    AGENT_REQUIREMENTS,
    DEFAULT_CMDLINE,
    DEFAULT_MIRROR,
    DEFAULT_SECURITY_MIRROR,
    DEFAULT_SUITE,
    MODULE_ZSTD_LEVEL,
    ZSTD_LEVEL,
    BuildError,
    BuildSpec,
    check_buildable,
    layer_key,
    mmdebstrap_argv,
    pip_deps_argv,
    sources,
)

__all__ = [
    "BuildResult",
    "NullReporter",
    "Reporter",
    "build_image",
    "default_cache_dir",
    "pinned_requirements",
]

log = logging.getLogger("scalerunner.imagebuild")

KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
_NODE_FILES = resources.files(__package__).joinpath("node")
# The checkout's files that make the agent layer (and its cache key).
_SOURCE_TOP = ("pyproject.toml", "README.md")
_SOURCE_PACKAGE = "scalerunner"


class Reporter(Protocol):
    def stage(self, name: str) -> None:
        """A new stage begins (the one before it is done)."""

    def line(self, text: str) -> None:
        """Output of the running stage's tool: the latest says where it is."""


class NullReporter:
    def stage(self, name: str) -> None:
        log.info("image build stage", extra={"stage": name})

    def line(self, text: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class BuildResult:
    manifest: Manifest
    out_dir: Path
    reused: bool  # nothing was built: the output already matched the inputs

    @property
    def kernel(self) -> Path:
        return self.out_dir / KERNEL_FILE

    @property
    def initrd(self) -> Path:
        return self.out_dir / INITRD_FILE


class _BaseInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the base layer holds, kept next to it in the cache."""

    kernel: KernelInfo
    python: str
    packages: dict[str, str]
    python_packages: dict[str, str]
    source_date_epoch: int


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "scalerunner" / "imagebuild"


def pinned_requirements(names: Sequence[str] = AGENT_REQUIREMENTS) -> tuple[str, ...]:
    """``names`` and everything they require, at the versions this environment runs (tested
    together), as ``Name==version``: the image gets exactly these (pip --no-deps), and the base
    layer is rebuilt exactly when one of them moves."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if canonicalize_name(name) in pins:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError as exc:
            raise BuildError(
                "pip", f"{name}, which the agent needs, is not installed here (make setup)"
            ) from exc
        pins[canonicalize_name(name)] = f"{dist.metadata['Name']}=={dist.version}"
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return tuple(sorted(pins.values(), key=str.lower))


# -- running tools ------------------------------------------------------------------------------


def _run(stage: str, argv: Sequence[str], reporter: Reporter, *, env: dict[str, str] | None = None) -> None:
    """Run ``argv``, passing each output line to the reporter; a failure ends the build with its tail."""
    tail: deque[str] = deque(maxlen=25)
    log.debug("run", extra={"stage": stage, "argv": " ".join(argv)})
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise BuildError(
            stage, f"cannot run {argv[0]}: {exc.strerror or exc} (make setup installs it)"
        ) from exc
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            text = raw.rstrip()
            if text:
                tail.append(text)
                reporter.line(text)
    if proc.returncode != 0:
        detail = "\n  ".join(tail)
        raise BuildError(stage, f"{Path(argv[0]).name} exited with {proc.returncode}:\n  {detail}")


def _env(epoch: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C.UTF-8", "PIP_NO_INPUT": "1"})
    env.pop("PYTHONPATH", None)
    return env


def _pack(stage: str, root: Path, out: Path, reporter: Reporter, *, owner_root: bool) -> None:
    """``root`` as a zstd-compressed newc archive: sorted names, no inode or device numbers."""
    cpio = "cpio --null --create --format=newc --reproducible --quiet" + (" -R 0:0" if owner_root else "")
    script = (
        f"set -o pipefail; cd {shlex.quote(str(root))} && find . -mindepth 1 -print0 | LC_ALL=C sort -z"
        f" | {cpio} | zstd -q -T0 -{ZSTD_LEVEL} -o {shlex.quote(str(out))}"
    )
    _run(stage, ["bash", "-c", script], reporter)


def _clamp_mtimes(stage: str, root: Path, epoch: int, reporter: Reporter) -> None:
    """Every file changed after ``epoch`` gets ``epoch`` as its time (SOURCE_DATE_EPOCH's rule)."""
    _run(
        stage,
        ["find", str(root), "-newermt", f"@{epoch}", "-exec", "touch", "-h", "-d", f"@{epoch}", "{}", "+"],
        reporter,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / "lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _host_arch() -> str:
    try:
        return subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError("arch", f"cannot ask dpkg for this machine's architecture: {exc}") from exc


def _binfmt_entries() -> list[str]:
    try:
        return os.listdir("/proc/sys/fs/binfmt_misc")
    except OSError:
        return []


# -- the base layer: Debian and the agent's dependencies ---------------------------------------


def _dpkg_versions(root: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(sorted(line.split("\t", 1) for line in out.splitlines() if "\t" in line))


def _dist_versions(site: Path) -> dict[str, str]:
    found = {}
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        fields = dict(
            line.split(": ", 1) for line in meta.read_text(errors="replace").splitlines()[:20] if ": " in line
        )
        if "Name" in fields and "Version" in fields:
            found[fields["Name"]] = fields["Version"]
    return found


def _image_python(root: Path) -> str:
    target = os.readlink(root / "usr/bin/python3") if (root / "usr/bin/python3").is_symlink() else ""
    name = Path(target).name
    if not name.startswith("python3."):
        raise BuildError("debian", f"{root}/usr/bin/python3 is not a link to python3.X ({target!r})")
    return name.removeprefix("python")


def _build_base(spec: BuildSpec, base_dir: Path, debs: Path, epoch: int, reporter: Reporter) -> _BaseInfo:
    work = Path(tempfile.mkdtemp(prefix=".base-", dir=base_dir.parent))
    try:
        root = work / "root"
        debs.mkdir(parents=True, exist_ok=True)
        reporter.stage(f"Debian {spec.suite} {spec.arch} root (mmdebstrap)")
        _run("mmdebstrap", mmdebstrap_argv(spec, str(root), str(debs), epoch), reporter, env=_env(epoch))

        python = _image_python(root)
        site = root / "usr/local/lib" / f"python{python}" / "dist-packages"
        reporter.stage(f"the agent's dependencies for Python {python} (pip)")
        host_python = f"{sys.version_info.major}.{sys.version_info.minor}"
        cross = spec.arch != _host_arch() or host_python != python
        argv = pip_deps_argv(sys.executable, spec, str(site), cross=cross, python_version=python)
        _run("pip", argv, reporter, env=_env(epoch))
        shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with the host's interpreter

        reporter.stage("kernel and package list")
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise BuildError("kernel", f"{spec.kernel} left no /boot/vmlinuz-* in the root")
        release = kernels[-1].name.removeprefix("vmlinuz-")
        packages = _dpkg_versions(root)
        kernel_pkg = f"linux-image-{release}"
        info = _BaseInfo(
            kernel=KernelInfo(package=kernel_pkg, version=packages.get(kernel_pkg, "?"), release=release),
            python=python,
            packages=packages,
            python_packages=_dist_versions(site),
            source_date_epoch=epoch,
        )
        modules = root / "usr/lib/modules" / release
        if not (modules / "modules.dep").is_file():
            raise BuildError("kernel", f"no modules.dep for {release}: depmod did not run in the root")
        # Compressed one by one, the modules take a quarter of the RAM (the root lives in a tmpfs
        # of half the node's memory); the image's kmod reads .ko.zst itself.
        reporter.stage("compressing the kernel modules (zstd)")
        jobs = str(max(1, os.cpu_count() or 1))
        find = f"find {shlex.quote(str(modules))} -name '*.ko' -print0"
        _run(
            "modules",
            ["bash", "-c", f"{find} | xargs -0 -r -P{jobs} -n64 zstd -q --rm -{MODULE_ZSTD_LEVEL}"],
            reporter,
        )
        chroot = (
            shutil.which("chroot", path=f"{os.environ.get('PATH', os.defpath)}:/usr/sbin:/sbin") or "chroot"
        )
        _run("modules", [chroot, str(root), "/sbin/depmod", release], reporter)
        staged = work / "out"
        staged.mkdir()
        shutil.copyfile(kernels[-1], staged / KERNEL_FILE)
        # The kernel lives outside the initrd; the rest of /boot and apt's state are no use in RAM.
        shutil.rmtree(root / "boot")
        (root / "boot").mkdir()
        for junk in ("var/lib/apt/lists", "var/cache/apt", "var/cache/debconf", "var/log"):
            for p in (root / junk).glob("*"):
                if p.is_file() or p.is_symlink():
                    p.unlink()
        reporter.stage("packing the Debian root (cpio, zstd)")
        _clamp_mtimes("pack", root, epoch, reporter)
        _pack("pack", root, staged / "root.cpio.zst", reporter, owner_root=False)
        (staged / "base.json").write_bytes(msgspec.json.encode(info))
        if base_dir.exists():
            shutil.rmtree(base_dir)
        os.replace(staged, base_dir)
        fsync_dir(base_dir.parent)
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _base_info(base_dir: Path) -> _BaseInfo | None:
    try:
        info = msgspec.json.decode((base_dir / "base.json").read_bytes(), type=_BaseInfo)
    except (OSError, msgspec.DecodeError):
        return None
    ok = (base_dir / "root.cpio.zst").is_file() and (base_dir / KERNEL_FILE).is_file()
    return info if ok else None


# -- the agent layer: this checkout, /init and friends -----------------------------------------


def _source_files(source: Path) -> list[Path]:
    """The checkout's files that make the wheel, relative to ``source``, sorted."""
    if not (source / "pyproject.toml").is_file() or not (source / _SOURCE_PACKAGE).is_dir():
        raise BuildError(
            "agent", f"{source} is not a Scalerunner checkout (no pyproject.toml and scalerunner/)"
        )
    files = [Path(name) for name in _SOURCE_TOP if (source / name).is_file()]
    for path in sorted((source / _SOURCE_PACKAGE).rglob("*")):
        rel = path.relative_to(source)
        if "__pycache__" in rel.parts or path.suffix == ".pyc" or not path.is_file():
            continue
        files.append(rel)
    return sorted(files)


def _digest_files(source: Path, files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for rel in files:
        data = (source / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _node_files() -> dict[str, tuple[bytes, int]]:
    """The boot scripts and where they go in the image (path -> contents, mode)."""
    node = _NODE_FILES

    def read(name: str) -> bytes:
        return node.joinpath(name).read_bytes()

    return {
        "init": (read("init.sh"), 0o755),
        "usr/lib/scalerunner/run-agent": (read("run-agent.sh"), 0o755),
        "usr/lib/scalerunner/udhcpc.script": (read("udhcpc.script"), 0o755),
        "etc/inittab": (read("inittab"), 0o644),
    }


def _console_scripts(site: Path) -> dict[str, str]:
    """``name -> module:function`` of the wheel's console scripts."""
    found: dict[str, str] = {}
    for ep in site.glob("scalerunner-*.dist-info/entry_points.txt"):
        section = ""
        for line in ep.read_text().splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "console_scripts" and "=" in line:
                name, _, target = line.partition("=")
                found[name.strip()] = target.strip()
    return found


def _drop_direct_url(site: Path) -> None:
    """pip records the wheel's temporary path in direct_url.json: gone, with its RECORD line, so
    the same checkout gives the same layer (and no build machine path is in the image)."""
    for info in site.glob("*.dist-info"):
        (info / "direct_url.json").unlink(missing_ok=True)
        record = info / "RECORD"
        if record.is_file():
            lines = record.read_text().splitlines(keepends=True)
            record.write_text("".join(line for line in lines if "/direct_url.json," not in line))


def _build_agent(
    source: Path,
    files: Sequence[Path],
    info: _BaseInfo,
    out: Path,
    image_id: str,
    epoch: int,
    reporter: Reporter,
) -> None:
    with tempfile.TemporaryDirectory(prefix=".agent-", dir=out.parent) as tmp:
        work = Path(tmp)
        src, wheels, stage = work / "src", work / "wheel", work / "stage"
        reporter.stage(f"the agent: a wheel of {source} (pip wheel)")
        for rel in files:  # a private copy: the build writes build/ and *.egg-info next to the source
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, src / rel)
        env = _env(epoch)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
        _run("agent", [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src)], reporter, env=env)
        wheel = next(wheels.glob("scalerunner-*.whl"), None)
        if wheel is None:
            raise BuildError("agent", "pip wheel made no scalerunner wheel")

        reporter.stage("the agent layer: package, /init, boot scripts")
        rel_site = Path("usr/local/lib") / f"python{info.python}" / "dist-packages"
        site = stage / rel_site
        same_python = info.python == f"{sys.version_info.major}.{sys.version_info.minor}"
        install = [*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)]
        _run("agent", install, reporter, env=env)
        shutil.rmtree(site / "bin", ignore_errors=True)
        _drop_direct_url(site)
        if same_python:  # hash-checked .pyc (SOURCE_DATE_EPOCH): valid whatever the files' times
            compile_argv = [
                sys.executable,
                "-m",
                "compileall",
                "-q",
                "-j0",
                "--invalidation-mode",
                "checked-hash",
            ]
            _run("agent", [*compile_argv, "-d", f"/{rel_site}", str(site)], reporter, env=env)
        bindir = stage / "usr/local/bin"
        bindir.mkdir(parents=True)
        for name, target in sorted(_console_scripts(site).items()):
            module, _, func = target.partition(":")
            script = f"#!/usr/bin/python3\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n"
            (bindir / name).write_text(script)
            (bindir / name).chmod(0o755)
        for where, (data, mode) in _node_files().items():
            dest = stage / where
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(mode)
        (stage / "etc/scalerunner").mkdir(parents=True, exist_ok=True)
        (stage / "etc/scalerunner/image-version").write_text(image_id + "\n")
        for d in [stage, *(p for p in stage.rglob("*") if p.is_dir())]:
            d.chmod(0o755)
        _clamp_mtimes("agent", stage, epoch, reporter)
        tmp_out = out.with_name(out.name + ".tmp")
        _pack("agent", stage, tmp_out, reporter, owner_root=True)
        os.replace(tmp_out, out)


# -- the whole build ------------------------------------------------------------------------------


def _checkout() -> Path:
    return Path(__file__).resolve().parents[2]


def _files_match(out_dir: Path, manifest: Manifest) -> bool:
    for f in manifest.files:
        path = out_dir / f.name
        if not path.is_file() or path.stat().st_size != f.size or _sha256(path) != f.sha256:
            return False
    return True


def _concat(parts: Sequence[Path], out: Path, align: int = 1) -> list[tuple[int, int]]:
    """``parts`` one after the other, the whole padded with zeros to a multiple of ``align``;
    returns each part's (offset, size). No padding between parts: a compressed archive may
    follow another at any offset, and zeros in between would stop the zstd tool (not the kernel)."""
    tmp = out.with_name(f".{out.name}.tmp")
    spans = []
    with tmp.open("wb") as w:
        for part in parts:
            offset = w.tell()
            with part.open("rb") as r:
                shutil.copyfileobj(r, w, 1 << 20)
            spans.append((offset, w.tell() - offset))
        w.write(b"\0" * (-w.tell() % align))
        w.flush()
        os.fsync(w.fileno())
    tmp.chmod(0o644)
    os.replace(tmp, out)
    return spans


def build_image(
    arch: str,
    out_dir: Path,
    *,
    suite: str = DEFAULT_SUITE,
    mirror: str = DEFAULT_MIRROR,
    security_mirror: str | None = DEFAULT_SECURITY_MIRROR,
    kernel_package: str = "",
    extra_packages: Sequence[str] = (),
    cache_dir: Path | None = None,
    source: Path | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> BuildResult:
    """Build (or reuse) the image for ``arch`` in ``out_dir``; BuildError names what failed."""
    started = time.monotonic()
    rep: Reporter = reporter or NullReporter()
    check_buildable(arch, _host_arch(), _binfmt_entries())
    if os.geteuid() != 0:
        raise BuildError("root", "run as root: mmdebstrap and depmod chroot into the image's root")
    spec = BuildSpec(
        arch=arch,
        suite=suite,
        mirror=mirror,
        security_mirror=security_mirror or None,
        kernel_package=kernel_package,
        extra_packages=tuple(extra_packages),
        requirements=pinned_requirements(),
    )
    cache = (cache_dir or default_cache_dir()).resolve()
    source = (source or _checkout()).resolve()
    env_epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    epoch = int(env_epoch) if env_epoch.isdigit() else int(time.time())
    with _locked(cache):
        base_key = layer_key("base", spec, {"epoch": env_epoch})
        files = _source_files(source)
        node_digest = hashlib.sha256(b"".join(d for d, _ in _node_files().values())).hexdigest()
        agent_key = layer_key(
            "agent", spec, {"base": base_key, "source": _digest_files(source, files), "node": node_digest}
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        old = read_manifest(out_dir / MANIFEST)
        if (
            not force
            and old is not None
            and (old.base_key, old.agent_key) == (base_key, agent_key)
            and _files_match(out_dir, old)
        ):
            rep.stage("up to date")
            log.info("image up to date", extra={"arch": arch, "out": str(out_dir)})
            return BuildResult(old, out_dir, reused=True)

        base_dir = cache / f"base-{arch}-{base_key[:16]}"
        info = None if force else _base_info(base_dir)
        if info is None:
            info = _build_base(spec, base_dir, cache / "debs" / arch, epoch, rep)
        else:
            rep.stage(f"Debian {suite} {arch} root: cached ({base_dir.name})")
        agent_layer = cache / f"agent-{agent_key[:16]}.cpio.zst"
        if force or not agent_layer.is_file():
            image_id = f"scalerunner-node {arch} {suite} agent {__version__} {agent_key[:12]}"
            _build_agent(source, files, info, agent_layer, image_id, info.source_date_epoch, rep)

        rep.stage(f"writing {out_dir}")
        # The kernel looks for the next archive at a 4-byte boundary and skips zeros before it:
        # padded, a node's settings initrd may follow this file directly.
        spans = _concat([base_dir / "root.cpio.zst", agent_layer], out_dir / INITRD_FILE, align=4)
        _concat([base_dir / KERNEL_FILE], out_dir / KERNEL_FILE)
        fsync_dir(out_dir)
        built = [
            ImageFile(name=name, sha256=_sha256(out_dir / name), size=(out_dir / name).stat().st_size)
            for name in (KERNEL_FILE, INITRD_FILE)
        ]
        manifest = Manifest(
            arch=arch,
            suite=suite,
            mirrors=sources(spec),
            cmdline=DEFAULT_CMDLINE,
            kernel=info.kernel,
            python=info.python,
            agent_version=__version__,
            files=built,
            packages=info.packages,
            python_packages=info.python_packages,
            base_key=base_key,
            agent_key=agent_key,
            layers=[
                Layer(name=name, offset=offset, size=size)
                for name, (offset, size) in zip(("base", "agent"), spans, strict=True)
            ],
            source_date_epoch=info.source_date_epoch,
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            build_seconds=round(time.monotonic() - started, 1),
        )
        write_manifest(out_dir / MANIFEST, manifest)
        _prune(cache, keep={base_dir.name, agent_layer.name}, arch=arch)
        log.info(
            "image built",
            extra={
                "arch": arch,
                "out": str(out_dir),
                "initrd_bytes": built[1].size,
                "seconds": manifest.build_seconds,
            },
        )
        return BuildResult(manifest, out_dir, reused=False)


def _prune(cache: Path, keep: set[str], arch: str) -> None:
    """Older layers of this arch go (the package cache stays): a cache holds one image's worth."""
    for p in cache.glob(f"base-{arch}-*"):
        if p.name not in keep and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    agents = sorted(cache.glob("agent-*.cpio.zst"), key=lambda p: p.stat().st_mtime)
    for p in agents[:-8]:  # agent layers are small; a few stay for other arches and branches
        if p.name not in keep:
            with contextlib.suppress(OSError):
                p.unlink()
