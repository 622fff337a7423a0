"""The image registry: boot images per arch, versioned, content-addressed, promoted to node
groups, rolled back, overridden per node (docs/images.md).

The store holds the metadata (schema 4: versions and their files, the promotion history,
overrides); the bytes are ``BlobStore`` files under ``<state_dir>/images/blobs``. The registry
keeps a copy of the metadata in memory (it is the only writer), so ``resolve`` - asked on every
boot request - needs no I/O. Every change is written to the store first, under one lock, and
only then to memory. The decisions are ``rules``'s plain functions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import CoordinatorError, StoreError, UnknownNode
from ..store.base import Event, ImageFileRecord, ImageRecord, OverrideRecord, PromotionRecord, Store
from . import rules
from .base import ROLES, BootFile, BootImage, FileRole
from .blobs import BlobStore

__all__ = ["ImageError", "ImageRegistry", "boot_image"]

log = logging.getLogger("scalerunner.coordinator.pxe.registry")

GC_GRACE = 3600.0  # s: an unreferenced blob younger than this may await its image version


class ImageError(CoordinatorError):
    """A registry request that cannot be done: ``status`` is its HTTP answer (404 unknown image
    or version, 409 the registry's state forbids it, 422 invalid), ``image`` the name at fault."""

    def __init__(self, status: int, detail: str, image: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.image = image


def boot_image(record: ImageRecord) -> BootImage:
    files = tuple(
        BootFile(name=f.name, role=_role(f.role), digest=f.digest, size=f.size) for f in record.files
    )
    return BootImage(
        name=record.name, version=record.version, arch=record.arch, cmdline=record.cmdline, files=files
    )


def _role(role: str) -> FileRole:
    for r in ROLES:
        if r == role:
            return r
    raise ValueError(f"unknown file role {role!r}")


class ImageRegistry:
    """``ImageSource`` for the boot servers, and the registry's operations for the API.

    ``nodes`` (node name -> (arch, boot group), from the inventory) lets a per-node override be
    checked against the node's arch, and every change that alters what a node boots next is
    recorded as an event of that node (axis ``image``). Without it any node name is taken and
    no event is recorded."""

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        *,
        nodes: Mapping[str, tuple[str, str]] | None = None,
        clock: Callable[[], float] = time.time,
        gc_grace: float = GC_GRACE,
    ) -> None:
        self.store = store
        self.blobs = BlobStore(state_dir / "images" / "blobs")
        self.nodes = dict(nodes) if nodes is not None else None
        self.clock = clock
        self.gc_grace = gc_grace
        self._lock = asyncio.Lock()
        self._images: dict[rules.ImageKey, ImageRecord] = {}
        self._history: dict[tuple[str, str], list[PromotionRecord]] = {}
        self._overrides: dict[str, OverrideRecord] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the metadata from the store and collect stray blobs (older than the grace)."""
        await asyncio.to_thread(self.blobs.start)
        async with self._lock:
            self._images = {(i.name, i.arch, i.version): i for i in await self.store.list_images()}
            self._history = {}
            for p in await self.store.list_promotions():
                self._history.setdefault((p.group, p.arch), []).append(p)
            self._overrides = {o.node: o for o in await self.store.list_overrides()}
            referenced = {f.digest for i in self._images.values() for f in i.files}
            stray = rules.garbage(self.blobs.on_disk(), referenced, self.clock(), self.gc_grace)
            if stray:
                self.blobs.delete(stray)
        log.info(
            "image registry loaded",
            extra={
                "versions": len(self._images),
                "overrides": len(self._overrides),
                "stray_blobs": len(stray),
            },
        )

    async def stop(self) -> None:
        async with self._lock:  # a change in progress is finished first
            pass

    def add_node(self, name: str, arch: str, group: str) -> None:
        """A node joined at runtime (an enrolled machine): overrides and events know it."""
        if self.nodes is not None:
            self.nodes[name] = (arch, group)

    # -- ImageSource --------------------------------------------------------------------------

    async def resolve(self, node: str, arch: str, group: str) -> BootImage | None:
        found = rules.resolve(self._images, self._history, self._overrides, node, arch, group)
        if found is None and node in self._overrides:
            o = self._overrides[node]
            log.warning(
                "override has no build for the node's arch",
                extra={"node": node, "image": o.image, "version": o.version, "arch": arch},
            )
        return None if found is None else boot_image(found)

    def blob_path(self, digest: str) -> Path:
        if not self.blobs.has(digest):
            raise KeyError(digest)
        return self.blobs.path(digest)

    # -- blobs --------------------------------------------------------------------------------

    def missing(self, digests: Iterable[str]) -> list[str]:
        """Of ``digests``, those not stored (in the order given, once each)."""
        out: list[str] = []
        for d in digests:
            problem = rules.digest_problem(d)
            if problem:
                raise ImageError(422, problem)
            if d not in out and not self.blobs.has(d):
                out.append(d)
        return out

    async def put_blob(self, digest: str, body: AsyncIterator[bytes]) -> tuple[int, bool]:
        """Store an upload (BlobError if it is not what ``digest`` says): (size, was it new)."""
        return await self.blobs.put(digest, body)

    # -- reading ------------------------------------------------------------------------------

    def images(self, name: str | None = None) -> list[ImageRecord]:
        found = [i for i in self._images.values() if name is None or i.name == name]
        return sorted(found, key=lambda i: (i.name, i.arch, i.created_at, i.version))

    def versions(self, name: str, version: str | None = None) -> list[ImageRecord]:
        """The builds of ``name`` (of ``version`` if given); ImageError 404 if there are none."""
        found = [i for i in self.images(name) if version is None or i.version == version]
        if not found:
            what = f"image {name} has no version {version}" if version else f"no image named {name}"
            raise ImageError(404, what, name)
        return found

    def history(self, name: str | None = None) -> list[PromotionRecord]:
        """Every promotion entry (of ``name`` if given), by group, arch and seq."""
        return [
            p for key in sorted(self._history) for p in self._history[key] if name is None or p.image == name
        ]

    def current(self) -> list[PromotionRecord]:
        """The promotion in force for each (group, arch)."""
        return [e for key in sorted(self._history) if (e := rules.current(self._history[key])) is not None]

    def overrides(self) -> list[OverrideRecord]:
        return [self._overrides[n] for n in sorted(self._overrides)]

    def node_arch(self, node: str) -> str | None:
        """A node's arch from the inventory (None: not known here)."""
        return None if self.nodes is None or node not in self.nodes else self.nodes[node][0]

    # -- changes ------------------------------------------------------------------------------

    async def add(
        self, name: str, version: str, arch: str, cmdline: str, files: Sequence[tuple[str, str, str]]
    ) -> tuple[ImageRecord, bool]:
        """Create a version from uploaded blobs: (the record, whether it is new). Creating one
        that exists with the same content answers it again (a retried ``images add``)."""
        problem = (
            rules.name_problem("image name", name)
            or rules.name_problem("version", version)
            or rules.arch_problem(arch)
            or rules.cmdline_problem(cmdline)
            or rules.files_problem(files)
        )
        if problem:
            raise ImageError(422, problem, name)
        async with self._lock:
            absent = [(n, d) for n, _, d in files if not self.blobs.has(d)]
            if absent:
                n, d = absent[0]
                raise ImageError(409, f"file {n}: blob {d} is not uploaded (PUT it first)", name)
            record = ImageRecord(
                name=name,
                arch=arch,
                version=version,
                cmdline=cmdline,
                created_at=self.clock(),
                files=tuple(
                    ImageFileRecord(name=n, role=r, digest=d, size=self.blobs.size(d)) for n, r, d in files
                ),
            )
            key = (name, arch, version)
            held = self._images.get(key)
            if held is not None:
                if (held.cmdline, held.files) == (record.cmdline, record.files):
                    return held, False
                raise ImageError(409, f"image {name} {version} ({arch}) exists with other content", name)
            if not await self.store.add_image(record):
                raise ImageError(409, f"image {name} {version} ({arch}) exists", name)
            self._images[key] = record
        log.info("image added", extra={"image": name, "version": version, "arch": arch})
        return record, True

    async def promote(
        self, name: str, version: str, group: str, arch: str | None = None
    ) -> list[PromotionRecord]:
        """Make ``version`` current for ``group`` on each arch it has (or on ``arch``)."""
        problem = rules.group_problem(group)
        if problem:
            raise ImageError(422, problem, name)
        async with self._lock:
            builds = self._builds(name, version, arch)
            now = self.clock()
            before = self._boots()
            entries = [
                rules.promote(self._history.get((group, b.arch), ()), group, b.arch, name, version, now)
                for b in builds
            ]
            await self.store.put_promotions(entries)
            for e in entries:
                self._history.setdefault((e.group, e.arch), []).append(e)
            await self._record(before, f"image {name} {version} promoted to group {group}", now)
        log.info("image promoted", extra={"image": name, "version": version, "group": group})
        return entries

    async def rollback(self, name: str, group: str, arch: str | None = None) -> list[PromotionRecord]:
        """Undo ``name``'s current promotion in ``group`` (on each arch where it is current, or
        on ``arch``); returns the entries current afterwards. All or nothing."""
        async with self._lock:
            keys = [
                (g, a)
                for (g, a), entries in sorted(self._history.items())
                if g == group
                and (arch is None or a == arch)
                and (e := rules.current(entries)) is not None
                and e.image == name
            ]
            if not keys:
                where = f"group {group}" + (f" for {arch}" if arch else "")
                raise ImageError(409, f"image {name} is not promoted to {where}", name)
            now = self.clock()
            before = self._boots()
            targets: list[PromotionRecord] = []
            changed: list[PromotionRecord] = []
            for key in keys:
                decided = rules.rollback(self._history[key], self._exists(key[1]), now)
                if decided is None:
                    e = rules.current(self._history[key])
                    assert e is not None
                    raise ImageError(
                        409,
                        f"nothing to roll back to: {name} {e.version} is the only version left in the "
                        f"history of group {group} ({key[1]})",
                        name,
                    )
                targets.append(decided[0])
                changed += decided[1]
            await self.store.put_promotions(changed)
            for c in changed:
                entries = self._history[(c.group, c.arch)]
                entries[:] = [c if e.seq == c.seq else e for e in entries]
            await self._record(before, f"image {name} rolled back in group {group}", now)
        log.info(
            "image rolled back",
            extra={
                "image": name,
                "group": group,
                "to": [f"{t.image} {t.version} ({t.arch})" for t in targets],
            },
        )
        return targets

    async def override(self, node: str, name: str, version: str) -> OverrideRecord:
        """``node`` boots ``name`` ``version`` whatever its group's promotion."""
        async with self._lock:
            node_arch = self._node_arch(node)
            builds = self.versions(name, version)
            if node_arch is not None and not any(b.arch == node_arch for b in builds):
                have = ", ".join(b.arch for b in builds)
                raise ImageError(
                    409, f"node {node} is {node_arch}; image {name} {version} is built for {have}", name
                )
            record = OverrideRecord(node=node, image=name, version=version, at=self.clock())
            before = self._boots()
            await self.store.put_override(record)
            self._overrides[node] = record
            await self._record(before, f"override: node {node} boots image {name} {version}", record.at)
        log.info("image override set", extra={"node": node, "image": name, "version": version})
        return record

    async def clear_override(self, node: str) -> bool:
        async with self._lock:
            self._node_arch(node)
            before = self._boots()
            cleared = await self.store.delete_override(node)
            self._overrides.pop(node, None)
            await self._record(before, f"override of node {node} cleared", self.clock())
        if cleared:
            log.info("image override cleared", extra={"node": node})
        return cleared

    async def remove(self, name: str, version: str, arch: str | None = None) -> tuple[list[ImageRecord], int]:
        """Remove a version (every arch, or ``arch``) and the blobs no other version uses:
        (the builds removed, how many blobs went). Refused while promoted or overridden."""
        async with self._lock:
            builds = self._builds(name, version, arch)
            for b in builds:
                problem = rules.removal_problem((b.name, b.arch, b.version), self._history, self._overrides)
                if problem:
                    raise ImageError(409, problem, name)
            keys = [(b.name, b.arch, b.version) for b in builds]
            await self.store.delete_images(keys)
            for k in keys:
                del self._images[k]
            orphans = rules.orphaned_blobs(builds, self._images.values())
            deleted = await asyncio.to_thread(self.blobs.delete, orphans)
        log.info("image removed", extra={"image": name, "version": version, "blobs_deleted": deleted})
        return builds, deleted

    # -- helpers ------------------------------------------------------------------------------

    def _builds(self, name: str, version: str, arch: str | None) -> list[ImageRecord]:
        builds = self.versions(name, version)
        if arch is not None:
            builds = [b for b in builds if b.arch == arch]
            if not builds:
                raise ImageError(404, f"image {name} {version} has no {arch} build", name)
        return builds

    def _exists(self, arch: str) -> Callable[[str, str], bool]:
        return lambda image, version: (image, arch, version) in self._images

    def _node_arch(self, node: str) -> str | None:
        if self.nodes is None:
            return None
        if node not in self.nodes:
            raise UnknownNode(node)
        return self.nodes[node][0]

    def _boots(self) -> dict[str, rules.ImageKey | None]:
        return rules.boots(self._images, self._history, self._overrides, self.nodes or {})

    async def _record(self, before: Mapping[str, rules.ImageKey | None], reason: str, at: float) -> None:
        """An ``image`` event for each node whose next boot changed. After the change itself
        (a crash in between loses the event, never the change)."""
        events = [
            Event(node=node, axis="image", old=_say(old), new=_say(new), reason=reason, at=at)
            for node, old, new in rules.changed_boots(before, self._boots())
        ]
        if events:
            try:
                await self.store.apply(None, events)
            except StoreError as exc:
                log.warning("cannot record image events: %s", exc, extra={"reason": reason})


def _say(key: rules.ImageKey | None) -> str:
    return "none" if key is None else f"{key[0]} {key[2]}"
