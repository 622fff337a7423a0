"""The store's image registry tables (SQLite): versions with their files in order, promotion
history, overrides, deletes that take the files along, and all of it across a reopen."""

from __future__ import annotations

import asyncio
from pathlib import Path

from scalerunner.coordinator.store import (
    ImageFileRecord,
    ImageRecord,
    OverrideRecord,
    PromotionRecord,
    SqliteStore,
)


def image(version: str, arch: str = "amd64", name: str = "node", at: float = 1.0) -> ImageRecord:
    return ImageRecord(
        name=name,
        arch=arch,
        version=version,
        cmdline="console=ttyS0 {node}",
        created_at=at,
        files=(
            ImageFileRecord(name="vmlinuz", role="kernel", digest="a" * 64, size=10),
            ImageFileRecord(name="initrd.img", role="initrd", digest="b" * 64, size=20),
            ImageFileRecord(name="a.dtb", role="dtb", digest="c" * 64, size=3),
        ),
    )


def test_image_versions_round_trip_with_their_files_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            assert await store.add_image(image("1.0", at=5.0))
            assert await store.add_image(image("0.9", at=2.0))
            assert await store.add_image(image("1.0", arch="arm64"))
            assert await store.add_image(image("1", name="other"))
            assert not await store.add_image(image("1.0", at=99.0))  # held already: kept as it was
            got = await store.list_images("node")
            assert [(i.arch, i.version) for i in got] == [
                ("amd64", "0.9"),
                ("amd64", "1.0"),
                ("arm64", "1.0"),
            ]
            assert got[1] == image("1.0", at=5.0)
            assert len(await store.list_images()) == 4
            assert await store.list_images("nope") == []
            assert await store.delete_images([("node", "amd64", "1.0"), ("node", "amd64", "7")]) == 1
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            assert [(i.arch, i.version) for i in await store.list_images("node")] == [
                ("amd64", "0.9"),
                ("arm64", "1.0"),
            ]
            # the deleted version's files went with it: adding it again starts afresh
            assert await store.add_image(image("1.0", at=7.0))
            assert (await store.list_images("node"))[1].files == image("1.0").files

    asyncio.run(main())


def test_promotions_and_overrides_round_trip_and_replace(tmp_path: Path) -> None:
    p1 = PromotionRecord(group="default", arch="amd64", seq=1, image="node", version="1", at=1.0)
    p2 = PromotionRecord(group="default", arch="amd64", seq=2, image="node", version="2", at=2.0)
    p3 = PromotionRecord(group="canary", arch="arm64", seq=1, image="node", version="2", at=3.0)

    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            await store.put_promotions([p2, p1, p3])
            await store.put_promotions([])
            assert await store.list_promotions() == [p3, p1, p2]
            undone = PromotionRecord(
                group="default", arch="amd64", seq=2, image="node", version="2", at=2.0, rolled_back_at=9.0
            )
            await store.put_promotions([undone])
            await store.put_override(OverrideRecord(node="n1", image="node", version="1", at=1.0))
            await store.put_override(OverrideRecord(node="n1", image="node", version="2", at=2.0))
            await store.put_override(OverrideRecord(node="n0", image="x", version="1", at=1.0))
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            assert await store.list_promotions() == [p3, p1, undone]
            assert [(o.node, o.version) for o in await store.list_overrides()] == [("n0", "1"), ("n1", "2")]
            assert await store.delete_override("n1")
            assert not await store.delete_override("n1")
            assert [o.node for o in await store.list_overrides()] == ["n0"]

    asyncio.run(main())
