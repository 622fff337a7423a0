"""What a node image is made of, and the commands that make it: pure, no I/O.

A build has two layers, each cached by the hash of its inputs (``layer_key``):

- the **base**: a Debian root made by mmdebstrap (python3, busybox, kmod, the kernel) plus the
  agent's runtime dependencies from PyPI; it changes when the suite, the package list or a
  dependency's version changes, and takes about a minute;
- the **agent**: this checkout's ``scalerunner`` package, the boot scripts (``/init``) and the
  image's own identity file; it changes with every edit of the project and takes seconds.

The initrd is the two layers as two compressed newc archives one after the other, which the
kernel unpacks in order (Documentation/driver-api/early-userspace/buffer-format.rst), so an
agent change never recompresses the Debian root.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

__all__ = [
    "AGENT_REQUIREMENTS",
    "ARCHES",
    "BASE_PACKAGES",
    "DEFAULT_CMDLINE",
    "DEFAULT_MIRROR",
    "DEFAULT_SECURITY_MIRROR",
    "DPKG_EXCLUDES",
    "ArchSpec",
    "BuildError",
    "BuildSpec",
    "check_buildable",
    "layer_key",
    "mmdebstrap_argv",
    "pip_deps_argv",
    "sources",
]

FORMAT = 2  # bump when the builder's output changes for the same inputs: every cache goes stale
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEFAULT_SUITE = "bookworm"
# The last console= is /dev/console, where /init and the agent write their progress.
DEFAULT_CMDLINE = "console=tty0 console=ttyS0,115200 panic=10"
MODULE_ZSTD_LEVEL = 15  # each kernel module: 92 MB -> 25 MB in ~15 s
ZSTD_LEVEL = 12  # ~4x on a Debian root in ~10 s on one core; -19 saves 10 % for 5x the time
MKTIRFS = "/usr/sbin/mktirfs"

# What the agent and the HIL bench import (a test compares this with the distributions that
# importing every module of scalerunner.nodeagent loads, httpx included, which the job executor
# imports only for artifacts); the builder adds what these require. The coordinator's own
# dependencies stay out of the image.
AGENT_REQUIREMENTS = (
    "aiomqtt",
    "click",
    "cobs",
    "httpx",
    "msgspec",
    "paho-mqtt",
    "rich",
    "typing_extensions",
)

# Every image's Debian packages besides the Essential ones and the kernel.
# usr-is-merged: else apt satisfies init-system-helpers with usrmerge, which pulls in perl.
# tiny-initramfs: the kernel needs an initramfs tool; this one is small, and never runs.
# mount: the process runtime's namespace setup mounts proc and overlays (not Essential).
BASE_PACKAGES = ("python3", "busybox", "kmod", "ca-certificates", "mount", "usr-is-merged", "tiny-initramfs")

# Documentation, manuals and translations: a RAM image has no reader for them. Copyright files stay.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)


class BuildError(Exception):
    """The image cannot be built; ``stage`` says where, the message what to do."""

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(f"{stage}: {detail}")
        self.stage = stage
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ArchSpec:
    debian: str  # dpkg's name for it
    kernel_package: str  # the metapackage that follows the suite's current kernel
    qemu_user: str  # the binfmt_misc entry that runs its binaries on another architecture
    pip_platforms: tuple[str, ...]  # wheel platform tags, when building on another architecture


ARCHES: Mapping[str, ArchSpec] = {
    # The cloud kernel boots VMs and most x86 servers with virtio or Intel NICs; a NUC with
    # a Realtek NIC wants linux-image-amd64 (--kernel-package) and its firmware.
    "amd64": ArchSpec("amd64", "linux-image-cloud-amd64", "qemu-x86_64", ("manylinux2014_x86_64",)),
    "arm64": ArchSpec("arm64", "linux-image-arm64", "qemu-aarch64", ("manylinux2014_aarch64",)),
}


def check_buildable(arch: str, host_arch: str, binfmt_entries: Sequence[str]) -> ArchSpec:
    """The spec of ``arch`` if this machine can build it, else a BuildError saying what is missing.

    A foreign architecture needs its binaries run through qemu-user (mmdebstrap runs the
    packages' maintainer scripts), which takes a binfmt_misc entry.
    """
    spec = ARCHES.get(arch)
    if spec is None:
        raise BuildError("arch", f"unknown architecture {arch!r}, expected one of {', '.join(ARCHES)}")
    if arch != host_arch and spec.qemu_user not in binfmt_entries:
        raise BuildError(
            "arch",
            f"cannot build {arch} on this {host_arch} machine: no binfmt_misc entry {spec.qemu_user}"
            " (install qemu-user-static and binfmt-support, docs/images.md)",
        )
    return spec


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """Every input of the base layer; the agent layer adds the project's files."""

    arch: str
    suite: str = DEFAULT_SUITE
    mirror: str = DEFAULT_MIRROR
    security_mirror: str | None = DEFAULT_SECURITY_MIRROR  # None: no security updates (a local mirror)
    kernel_package: str = ""  # empty: the arch's default
    extra_packages: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()  # pinned: "msgspec==0.23.0"
    dpkg_excludes: tuple[str, ...] = DPKG_EXCLUDES
    format: int = FORMAT

    @property
    def kernel(self) -> str:
        return self.kernel_package or ARCHES[self.arch].kernel_package

    @property
    def packages(self) -> tuple[str, ...]:
        return (*BASE_PACKAGES, self.kernel, *self.extra_packages)


def sources(spec: BuildSpec) -> list[str]:
    """The apt sources of the build, one-line format."""
    lines = [f"deb {spec.mirror} {spec.suite} main", f"deb {spec.mirror} {spec.suite}-updates main"]
    if spec.security_mirror:
        lines.append(f"deb {spec.security_mirror} {spec.suite}-security main")
    return lines


def mmdebstrap_argv(spec: BuildSpec, root: str, debs: str, source_date_epoch: int) -> list[str]:
    """mmdebstrap for the base root into directory ``root``, keeping downloaded packages in ``debs``.

    ``essential`` is the smallest variant that has a shell; apt is not in the image (nothing
    installs packages on a RAM node). mktirfs is diverted to ``true`` before the kernel's
    postinst runs it: the image is its own initramfs and needs none inside it.
    """
    del source_date_epoch  # passed through the environment; here so callers cannot forget it
    divert = (
        f'chroot "$1" dpkg-divert --quiet --local --rename --add {MKTIRFS} && ln -sf /bin/true "$1{MKTIRFS}"'
    )
    argv = [
        "mmdebstrap",
        "--variant=essential",
        f"--architectures={ARCHES[spec.arch].debian}",
        f"--include={','.join(spec.packages)}",
        *(f"--dpkgopt={opt}" for opt in spec.dpkg_excludes),
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        f"--essential-hook={divert}",
        # The package cache outside the root: a rebuild downloads nothing new.
        "--skip=download/empty",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        spec.suite,
        root,
        *sources(spec),
    ]
    return argv


def pip_deps_argv(
    python: str, spec: BuildSpec, target: str, *, cross: bool, python_version: str
) -> list[str]:
    """pip installing the agent's dependencies into the image's ``dist-packages`` (``target``).

    On the image's own architecture the host's Python is the image's (same Debian suite), so
    pip builds what has no wheel (cobs). On another one only wheels for its platform and Python
    will do, since nothing can be compiled for it here.
    """
    argv = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    argv += ["--no-warn-script-location", "--target", target]
    if cross:
        argv += ["--only-binary=:all:", f"--python-version={python_version}", "--implementation=cp"]
        argv += [f"--abi=cp{python_version.replace('.', '')}"]
        argv += [f"--platform={p}" for p in ARCHES[spec.arch].pip_platforms]
    return [*argv, *spec.requirements]


@dataclass(frozen=True, slots=True)
class _Key:
    layer: str
    spec: dict[str, object] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)


def layer_key(layer: str, spec: BuildSpec, extra: Mapping[str, str] | None = None) -> str:
    """The cache key of a layer: sha256 of its inputs as canonical JSON (hex, 64 digits). The
    inputs are the spec and the mmdebstrap command it gives, so a change to the package list or
    the hooks in this file makes a new key too."""
    inputs = {**asdict(spec), "mmdebstrap": mmdebstrap_argv(spec, "ROOT", "DEBS", 0)}
    doc = asdict(_Key(layer, inputs, dict(sorted((extra or {}).items()))))
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
