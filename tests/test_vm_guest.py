"""The vm runtime's pure parts: the initramfs archive, the job script's quoting, the QEMU command."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.nodeagent.images import ImageError, registry_of
from scalerunner.nodeagent.runtime.base import JobRun, RuntimeFault
from scalerunner.nodeagent.runtime.vm import GuestStatus, VmConfig, VmRuntime, parse_status, qemu_argv
from scalerunner.nodeagent.runtime.vm_guest import (
    CpioEntry,
    GuestError,
    GuestKernel,
    job_archive,
    newc_archive,
    shell_words,
)

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=20).filter(
    lambda n: n not in (".", "..")
)
files = st.dictionaries(names, st.binary(max_size=300), min_size=1, max_size=8)
words = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30)


@given(files=files)
def test_newc_archive_extracts_with_the_real_cpio_to_the_same_files(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]
) -> None:
    out = tmp_path_factory.mktemp("cpio")
    entries = [CpioEntry("d", stat.S_IFDIR | 0o755)]
    entries += [CpioEntry(f"d/{n}", stat.S_IFREG | 0o640, data) for n, data in files.items()]
    entries.append(CpioEntry("link", stat.S_IFLNK | 0o777, b"d"))
    proc = subprocess.run(
        ["cpio", "-id", "--quiet"], input=newc_archive(entries), cwd=out, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    for n, data in files.items():
        assert (out / "d" / n).read_bytes() == data
        assert stat.S_IMODE((out / "d" / n).stat().st_mode) == 0o640
    assert (out / "link").is_symlink() and (out / "link").readlink() == Path("d")


@given(argv=st.lists(words, max_size=6))
def test_shell_words_read_back_exactly_by_busybox_sh(argv: list[str]) -> None:
    out = subprocess.run(
        ["/bin/busybox", "sh", "-c", "printf '%s\\0' " + shell_words(["--", *argv])], capture_output=True
    ).stdout
    assert out.decode().split("\0")[:-1] == ["--", *argv]


def test_job_archive_rejects_an_env_name_the_shell_cannot_hold_naming_the_job() -> None:
    with pytest.raises(ValueError, match="job j7: environment variable name 'A-B'"):
        job_archive(["true"], {"A-B": "1"}, "j7")
    with pytest.raises(ValueError, match="job j7: empty command"):
        job_archive([], {}, "j7")


env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@given(argv=st.lists(words, min_size=1, max_size=4), env=st.dictionaries(env_names, words, max_size=4))
def test_job_script_gives_init_the_exact_argv_and_env(
    tmp_path_factory: pytest.TempPathFactory, argv: list[str], env: dict[str, str]
) -> None:
    out = tmp_path_factory.mktemp("job")
    subprocess.run(["cpio", "-id", "--quiet"], input=job_archive(argv, env, "j1"), cwd=out, check=True)

    # What init.sh does with run.sh, with printf and env standing in for unshare + chroot.
    def sh(script: str) -> list[str]:
        cmd = ["/bin/busybox", "sh", "-c", ". ./job/run.sh; " + script]
        got = subprocess.run(cmd, cwd=out, capture_output=True, check=True).stdout
        return got.decode().split("\0")[:-1]

    assert sh('printf "%s\\0" "$@"') == argv
    pairs = [kv.split("=", 1) for kv in sh('eval "env -i $JOB_ENV /bin/busybox env -0"')]
    assert dict(pairs) == env


def test_qemu_argv_sizes_the_vm_from_the_job(tmp_path: Path) -> None:
    job = JobRun(job="j", attempt=1, argv=("true",), cpus=1.5, memory_mb=300, workdir=tmp_path)
    socks = {p: tmp_path / f"{p}.sock" for p in ("stdout", "stderr", "work", "status")}
    argv = qemu_argv(VmConfig(), "tcg", job, Path("k"), Path("i"), tmp_path / "d", socks)
    assert argv[argv.index("-m") + 1] == "364"  # the job's memory plus the guest's own
    assert argv[argv.index("-smp") + 1] == "2"
    assert "q35,accel=tcg" in argv
    assert sum(a.startswith("virtserialport") for a in argv) == 4


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("exit 0 out=3 err=0 work=10240\n", GuestStatus(0, sizes={"stdout": 3, "stderr": 0, "work": 10240})),
        ("exit 137\n", GuestStatus(137)),
        ("fault insmod virtio failed\n", GuestStatus(None, "insmod virtio failed")),
        ("exit 3 out=1", None),  # no end of line yet: more to come
        ("", None),
        ("exit x\nexit 2\n", GuestStatus(2)),  # a garbled line is skipped
    ],
)
def test_parse_status(text: str, parsed: GuestStatus | None) -> None:
    assert parse_status(text) == parsed


def test_a_missing_guest_kernel_is_a_runtime_fault_naming_the_job_and_make_setup(tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="make setup"):
        GuestKernel.find(tmp_path)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    job = JobRun(job="job-42", attempt=1, argv=("true",), rootfs=rootfs, workdir=tmp_path)
    runtime = VmRuntime(VmConfig(guest_dir=tmp_path / "empty", accel="tcg"))
    with pytest.raises(RuntimeFault, match=r"job job-42: vm guest: no guest kernel under .*make setup"):
        import asyncio

        asyncio.run(runtime.run(job, lambda s, b: None))


def test_a_job_without_a_root_filesystem_is_a_runtime_fault(tmp_path: Path) -> None:
    import asyncio

    job = JobRun(job="job-43", attempt=1, argv=("true",), rootfs=None, workdir=tmp_path)
    with pytest.raises(RuntimeFault, match="job job-43: vm runtime needs the image's root filesystem"):
        asyncio.run(VmRuntime(VmConfig(accel="tcg")).run(job, lambda s, b: None))


@pytest.mark.parametrize(
    ("ref", "registry"),
    [
        ("busybox", "docker.io"),
        ("library/busybox:1", "docker.io"),
        ("127.0.0.1:5000/a/b:1", "127.0.0.1:5000"),
        ("docker://localhost/x", "localhost"),
        ("quay.io/a/b@sha256:00", "quay.io"),
    ],
)
def test_registry_of(ref: str, registry: str) -> None:
    assert registry_of(ref) == registry


@pytest.mark.parametrize("ref", ["", "a b", "-rm", "x://y"])
def test_a_bad_reference_is_an_error_naming_it(tmp_path: Path, ref: str) -> None:
    import asyncio

    from scalerunner.nodeagent.images import ImageStore

    with pytest.raises(ImageError, match="not an image reference") as info:
        asyncio.run(ImageStore(tmp_path).pull(ref))
    assert info.value.image == ref


@given(
    code=st.integers(0, 255),
    sizes=st.fixed_dictionaries({"out": st.integers(0, 2**40), "err": st.integers(0, 2**40)}),
    noise=st.text(max_size=40),
)
def test_parse_status_reads_what_init_writes_and_never_raises_on_noise(
    code: int, sizes: dict[str, int], noise: str
) -> None:
    line = f"exit {code} out={sizes['out']} err={sizes['err']} work=0\n"
    assert parse_status(line) == GuestStatus(
        code, sizes={"stdout": sizes["out"], "stderr": sizes["err"], "work": 0}
    )
    assert parse_status(line[:-1]) is None  # a line is not complete before its newline
    parse_status(noise)  # whatever the console sends, no exception


def test_the_work_dir_goes_into_the_job_archive_with_modes_and_links_and_is_bounded(tmp_path: Path) -> None:
    from scalerunner.nodeagent.runtime import vm_guest

    work = tmp_path / "work"
    (work / "d").mkdir(parents=True)
    (work / "d" / "x.sh").write_bytes(b"#!/bin/sh\n")
    (work / "d" / "x.sh").chmod(0o750)
    (work / "l").symlink_to("d/x.sh")
    entries = {e.path: e for e in vm_guest.work_entries(work, "j1")}
    assert sorted(entries) == ["job/work", "job/work/d", "job/work/d/x.sh", "job/work/l"]
    assert entries["job/work/d/x.sh"].mode == stat.S_IFREG | 0o750
    assert entries["job/work/d/x.sh"].data == b"#!/bin/sh\n"
    assert (entries["job/work/l"].mode, entries["job/work/l"].data) == (stat.S_IFLNK | 0o777, b"d/x.sh")
    os.mkfifo(work / "pipe")
    with pytest.raises(ValueError, match=r"job j1: .*pipe in the work dir is not a file"):
        vm_guest.work_entries(work, "j1")
    (work / "pipe").unlink()
    with open(work / "big", "wb") as fh:
        fh.truncate(vm_guest.WORK_IN_MAX + 1)
    with pytest.raises(ValueError, match=r"job j1: work dir .* holds more than 64 MiB"):
        vm_guest.work_entries(work, "j1")
