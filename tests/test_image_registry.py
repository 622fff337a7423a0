"""The image registry (pxe/registry.py, pxe/blobs.py) over a real SQLite store and real files:
uploads checked against their digest, read-only blobs, versions, promotion, rollback, overrides,
removal and its refusals, garbage, and all of it after a restart."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from scalerunner.coordinator.errors import UnknownNode
from scalerunner.coordinator.pxe.blobs import BlobError
from scalerunner.coordinator.pxe.registry import ImageError, ImageRegistry
from scalerunner.coordinator.store import SqliteStore

KERNEL = b"kernel " * 1000
INITRD = b"initrd " * 2000
DTB = b"dtb"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


Body = Callable[[ImageRegistry], Awaitable[None]]


def run(tmp_path: Path, *bodies: Body, clock: Callable[[], float] | None = None) -> None:
    """Run each body against a freshly started registry on the same state (a restart between)."""

    async def main() -> None:
        for body in bodies:
            async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
                reg = ImageRegistry(
                    store,
                    tmp_path,
                    nodes={"n1": ("amd64", "default"), "n2": ("arm64", "canary")},
                    clock=clock or time.time,
                )
                await reg.start()
                try:
                    await body(reg)
                finally:
                    await reg.stop()

    asyncio.run(main())


async def add(reg: ImageRegistry, version: str, arch: str = "amd64", kernel: bytes = KERNEL) -> None:
    for data in (kernel, INITRD):
        await reg.put_blob(sha(data), chunks(data))
    files = [("vmlinuz", "kernel", sha(kernel)), ("initrd.img", "initrd", sha(INITRD))]
    await reg.add("node", version, arch, "console=ttyS0 {node}", files)


def test_an_upload_is_stored_read_only_under_its_digest_and_a_mismatch_leaves_nothing(tmp_path: Path) -> None:
    async def body(reg: ImageRegistry) -> None:
        assert await reg.put_blob(sha(KERNEL), chunks(KERNEL)) == (len(KERNEL), True)
        path = reg.blob_path(sha(KERNEL))
        assert path == tmp_path / "images" / "blobs" / "sha256" / sha(KERNEL)
        assert path.read_bytes() == KERNEL
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
        assert await reg.put_blob(sha(KERNEL), chunks(b"never read")) == (len(KERNEL), False)
        with pytest.raises(BlobError, match="sha256 is") as info:
            await reg.put_blob(sha(INITRD), chunks(INITRD[:-1] + b"X"))  # tampered on the way
        assert info.value.status == 422
        with pytest.raises(KeyError):
            reg.blob_path(sha(INITRD))
        assert os.listdir(tmp_path / "images" / "blobs" / "tmp") == []
        assert reg.missing([sha(INITRD), sha(KERNEL), sha(INITRD)]) == [sha(INITRD)]
        for bad in ("../../etc/passwd", "A" * 64, "a" * 63):
            with pytest.raises(BlobError, match="64 lower-case hex"):
                await reg.put_blob(bad, chunks(b"x"))
            with pytest.raises(KeyError):
                reg.blob_path(bad)

    run(tmp_path, body)


def test_a_broken_upload_leaves_no_partial_file(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise ConnectionResetError("client went away")

    async def body(reg: ImageRegistry) -> None:
        with pytest.raises(ConnectionResetError):
            await reg.put_blob(sha(KERNEL), broken())
        assert not reg.blobs.has(sha(KERNEL))
        assert os.listdir(tmp_path / "images" / "blobs" / "tmp") == []
        reg.blobs.tmp.rmdir()  # the disk refuses (root ignores modes: a file in the way)
        reg.blobs.tmp.write_bytes(b"not a directory")
        with pytest.raises(BlobError, match="cannot store it") as info:
            await reg.put_blob(sha(KERNEL), chunks(KERNEL))
        assert info.value.status == 507
        reg.blobs.tmp.unlink()
        reg.blobs.tmp.mkdir()
        reg.blobs.max_size = 10
        with pytest.raises(BlobError, match="larger than 10") as info:
            await reg.put_blob(sha(KERNEL), chunks(KERNEL))
        assert info.value.status == 413

    run(tmp_path, body)


def test_a_version_needs_its_blobs_and_valid_names(tmp_path: Path) -> None:
    async def body(reg: ImageRegistry) -> None:
        with pytest.raises(ImageError, match=r"vmlinuz: blob \w+ is not uploaded") as info:
            await reg.add("node", "1", "amd64", "", [("vmlinuz", "kernel", sha(KERNEL))])
        assert info.value.status == 409
        await reg.put_blob(sha(KERNEL), chunks(KERNEL))
        for name, version, arch, file in [
            ("../x", "1", "amd64", "vmlinuz"),
            ("node", "a/b", "amd64", "vmlinuz"),
            ("node", "1", "x86", "vmlinuz"),
            ("node", "1", "amd64", "../../vmlinuz"),
        ]:
            with pytest.raises(ImageError) as info:
                await reg.add(name, version, arch, "", [(file, "kernel", sha(KERNEL))])
            assert info.value.status == 422
        await add(reg, "1")
        await add(reg, "1")  # the same again: answered, not an error
        with pytest.raises(ImageError, match="exists with other content"):
            await reg.add("node", "1", "amd64", "other", [("vmlinuz", "kernel", sha(KERNEL))])
        [v] = reg.versions("node", "1")
        assert [(f.name, f.role, f.size) for f in v.files] == [
            ("vmlinuz", "kernel", len(KERNEL)),
            ("initrd.img", "initrd", len(INITRD)),
        ]

    run(tmp_path, body)


def test_promote_resolve_rollback_override_and_a_restart_keeps_them(tmp_path: Path) -> None:
    async def first(reg: ImageRegistry) -> None:
        assert await reg.resolve("n1", "amd64", "default") is None
        await add(reg, "1")
        await add(reg, "2", kernel=KERNEL + b"2")
        await add(reg, "1", arch="arm64")
        done = await reg.promote("node", "1", "default")
        assert sorted(p.arch for p in done) == ["amd64", "arm64"]  # each arch the version has
        await reg.promote("node", "2", "canary")
        image = await reg.resolve("n1", "amd64", "canary")
        assert image is not None and (image.version, image.kernel and image.kernel.size) == (
            "2",
            len(KERNEL) + 1,
        )
        assert image.cmdline == "console=ttyS0 {node}"
        assert (await reg.resolve("n2", "arm64", "canary")).version == "1"  # type: ignore[union-attr]
        await reg.promote("node", "2", "default", arch="amd64")
        assert (await reg.resolve("n1", "amd64", "default")).version == "2"  # type: ignore[union-attr]
        with pytest.raises(ImageError, match="no riscv64 build"):
            await reg.promote("node", "1", "default", arch="riscv64")
        with pytest.raises(ImageError, match="group 'Bad_Group'"):
            await reg.promote("node", "1", "Bad_Group")
        await reg.override("n1", "node", "1")
        with pytest.raises(ImageError, match="n2 is arm64; image node 2 is built for amd64"):
            await reg.override("n2", "node", "2")
        with pytest.raises(UnknownNode):
            await reg.override("ghost", "node", "1")

    async def second(reg: ImageRegistry) -> None:  # after a restart
        assert (await reg.resolve("n1", "amd64", "canary")).version == "1"  # type: ignore[union-attr]
        assert await reg.clear_override("n1")
        assert not await reg.clear_override("n1")
        assert (await reg.resolve("n1", "amd64", "default")).version == "2"  # type: ignore[union-attr]
        back = await reg.rollback("node", "default", arch="amd64")
        assert [(p.arch, p.version) for p in back] == [("amd64", "1")]
        assert (await reg.resolve("n1", "amd64", "default")).version == "1"  # type: ignore[union-attr]
        with pytest.raises(ImageError, match="nothing to roll back to"):
            await reg.rollback("node", "default")
        with pytest.raises(ImageError, match="not promoted to group nobody"):
            await reg.rollback("node", "nobody")

    async def third(reg: ImageRegistry) -> None:
        assert (await reg.resolve("n1", "amd64", "default")).version == "1"  # type: ignore[union-attr]
        got = [
            (p.arch, p.version, p.rolled_back_at is not None)
            for p in reg.history("node")
            if p.group == "default"
        ]
        assert got == [("amd64", "1", False), ("amd64", "2", True), ("arm64", "1", False)]

    run(tmp_path, first, second, third)


def test_remove_is_refused_while_in_use_and_takes_only_unshared_blobs(tmp_path: Path) -> None:
    async def body(reg: ImageRegistry) -> None:
        await add(reg, "1")
        await add(reg, "2", kernel=KERNEL + b"2")  # shares the initrd with 1
        await reg.promote("node", "1", "default")
        with pytest.raises(ImageError, match="promoted to group default") as info:
            await reg.remove("node", "1")
        assert info.value.status == 409
        await reg.override("n1", "node", "2")
        with pytest.raises(ImageError, match="override of node n1"):
            await reg.remove("node", "2")
        await reg.clear_override("n1")
        removed, deleted = await reg.remove("node", "2")
        assert [r.version for r in removed] == ["2"] and deleted == 1
        assert not reg.blobs.has(sha(KERNEL + b"2"))
        assert reg.blobs.has(sha(INITRD)) and reg.blobs.has(sha(KERNEL))  # still used by 1
        with pytest.raises(ImageError, match="has no version 2") as info:
            await reg.remove("node", "2")
        assert info.value.status == 404

    run(tmp_path, body)


def test_stray_blobs_are_collected_at_start_after_the_grace(tmp_path: Path) -> None:
    now = [1e9]

    async def upload(reg: ImageRegistry) -> None:
        await add(reg, "1")
        await reg.put_blob(sha(DTB), chunks(DTB))  # never used by a version
        os.utime(reg.blobs.path(sha(DTB)), (now[0] - 10, now[0] - 10))

    async def soon(reg: ImageRegistry) -> None:
        assert reg.blobs.has(sha(DTB))  # young: may await its version
        now[0] += 7200

    async def later(reg: ImageRegistry) -> None:
        assert not reg.blobs.has(sha(DTB))
        assert reg.blobs.has(sha(KERNEL)) and reg.blobs.has(sha(INITRD))

    run(tmp_path, upload, soon, later, clock=lambda: now[0])


def test_each_change_to_what_a_node_boots_next_is_an_event_of_that_node(tmp_path: Path) -> None:
    async def body(reg: ImageRegistry) -> None:
        await add(reg, "1")
        await add(reg, "1", arch="arm64")
        await add(reg, "2", kernel=KERNEL + b"2")
        await reg.promote("node", "1", "default")  # both nodes: n2's canary group falls back
        await reg.promote("node", "2", "canary")  # amd64 only: n2 is arm64, n1 is in default
        await reg.override("n1", "node", "2")
        await reg.override("n1", "node", "2")  # the same again: no change, no event
        await reg.clear_override("n1")
        events = [
            (e.node, e.old, e.new, e.reason) for e in await reg.store.list_events() if e.axis == "image"
        ]
        assert events == [
            ("n1", "none", "node 1", "image node 1 promoted to group default"),
            ("n2", "none", "node 1", "image node 1 promoted to group default"),
            ("n1", "node 1", "node 2", "override: node n1 boots image node 2"),
            ("n1", "node 2", "node 1", "override of node n1 cleared"),
        ]

    run(tmp_path, body)


def test_concurrent_uploads_of_one_blob_store_it_once_whole(tmp_path: Path) -> None:
    async def slow(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 500):
            await asyncio.sleep(0)  # interleave the uploads piece by piece
            yield data[i : i + 500]

    async def body(reg: ImageRegistry) -> None:
        got = await asyncio.gather(*(reg.put_blob(sha(KERNEL), slow(KERNEL)) for _ in range(4)))
        assert all(size == len(KERNEL) for size, _ in got) and any(new for _, new in got)
        assert reg.blob_path(sha(KERNEL)).read_bytes() == KERNEL
        assert os.listdir(reg.blobs.dir) == [sha(KERNEL)]
        assert os.listdir(reg.blobs.tmp) == []

    run(tmp_path, body)
