"""The image registry as a hypothesis state machine over a real SQLite store and real blob files:
random adds, promotions, rollbacks, overrides, removals and restarts. After every step: each
version's files are on disk, nothing half-written is left, what nodes boot exists; a restart
rebuilds exactly the same registry from the store; a removal succeeds only when nothing uses it."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scalerunner.coordinator.pxe import rules
from scalerunner.coordinator.pxe.registry import ImageError, ImageRegistry
from scalerunner.coordinator.store import SqliteStore

pytestmark = pytest.mark.slow  # a long hypothesis run (about 10 s)

NODES = {"a1": ("amd64", "default"), "a2": ("amd64", "canary"), "r1": ("arm64", "canary")}
VERSIONS = st.sampled_from(["1", "2", "3", "4"])
ARCHES = st.sampled_from(["amd64", "arm64"])
GROUPS = st.sampled_from(["default", "canary"])
CONTENTS = st.sampled_from([b"k1", b"k2", b"k3", b"shared"])


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="a1-registry-"))
        self.loop = asyncio.new_event_loop()
        self.store: SqliteStore | None = None
        self.reg = self._open()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _open(self) -> ImageRegistry:
        self.store = SqliteStore(self.dir / "s.db", flush_interval=None)
        self.run(self.store.start())
        reg = ImageRegistry(self.store, self.dir, nodes=NODES)
        self.run(reg.start())
        return reg

    def _close(self) -> None:
        self.run(self.reg.stop())
        assert self.store is not None
        self.run(self.store.stop())

    def teardown(self) -> None:
        self._close()
        self.loop.close()
        shutil.rmtree(self.dir)

    def snapshot(self) -> tuple[Any, ...]:
        r = self.reg
        return (r.images(), r.history(), r.overrides(), r._boots())

    @rule(version=VERSIONS, arch=ARCHES, kernel=CONTENTS, initrd=CONTENTS)
    def add(self, version: str, arch: str, kernel: bytes, initrd: bytes) -> None:
        for data in {kernel, initrd}:
            self.run(self.reg.put_blob(hashlib.sha256(data).hexdigest(), one(data)))
        files = [
            ("vmlinuz", "kernel", hashlib.sha256(kernel).hexdigest()),
            ("initrd.img", "initrd", hashlib.sha256(initrd).hexdigest()),
        ]
        try:
            self.run(self.reg.add("node", version, arch, "", files))
        except ImageError as exc:
            assert exc.status == 409 and "other content" in exc.detail

    @rule(version=VERSIONS, group=GROUPS, arch=st.none() | ARCHES)
    def promote(self, version: str, group: str, arch: str | None) -> None:
        try:
            self.run(self.reg.promote("node", version, group, arch))
        except ImageError as exc:
            assert exc.status == 404

    @rule(group=GROUPS)
    def rollback(self, group: str) -> None:
        before = self.reg.current()
        try:
            self.run(self.reg.rollback("node", group))
        except ImageError as exc:
            assert exc.status == 409
            assert self.reg.current() == before  # all or nothing

    @rule(data=st.data())
    def override(self, data: st.DataObject) -> None:
        # mostly a build that exists for the node's arch, so overrides are common
        held = [(n, i.version) for n, (arch, _) in NODES.items() for i in self.reg.images() if i.arch == arch]
        picks = st.sampled_from(held) if held else st.tuples(st.sampled_from(sorted(NODES)), VERSIONS)
        node, version = data.draw(picks | st.tuples(st.sampled_from(sorted(NODES)), VERSIONS))
        try:
            self.run(self.reg.override(node, "node", version))
        except ImageError as exc:
            assert exc.status in (404, 409)

    @rule(node=st.sampled_from(sorted(NODES)))
    def clear(self, node: str) -> None:
        self.run(self.reg.clear_override(node))

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        held = sorted({i.version for i in self.reg.images()})
        version = data.draw((st.sampled_from(held) if held else VERSIONS) | VERSIONS)
        builds = [i for i in self.reg.images("node") if i.version == version]
        in_use = any(
            rules.removal_problem((b.name, b.arch, b.version), self.reg._history, self.reg._overrides)
            for b in builds
        )
        try:
            self.run(self.reg.remove("node", version))
        except ImageError as exc:
            assert exc.status == (409 if builds else 404)
            assert in_use or not builds
        else:
            assert builds and not in_use
            assert not any(i.version == version for i in self.reg.images())

    @rule()
    def restart(self) -> None:
        before = self.snapshot()
        self._close()
        self.reg = self._open()
        assert self.snapshot() == before

    @invariant()
    def memory_is_what_the_store_holds(self) -> None:
        store = self.store
        assert store is not None
        assert self.reg.images() == self.run(store.list_images())
        assert self.reg.history() == self.run(store.list_promotions())
        assert self.reg.overrides() == self.run(store.list_overrides())

    @invariant()
    def files_exist_and_nothing_is_half_written(self) -> None:
        for image in self.reg.images():
            for f in image.files:
                path = self.reg.blob_path(f.digest)
                assert hashlib.sha256(path.read_bytes()).hexdigest() == f.digest
        assert list((self.dir / "images" / "blobs" / "tmp").iterdir()) == []

    @invariant()
    def what_nodes_boot_exists(self) -> None:
        held = {(i.name, i.arch, i.version) for i in self.reg.images()}
        for node, (arch, group) in NODES.items():
            image = self.run(self.reg.resolve(node, arch, group))
            if image is not None:
                assert (image.name, image.arch, image.version) in held
                assert image.arch == arch
            if node in self.reg._overrides:  # an override is never bypassed for the group's
                o = self.reg._overrides[node]
                assert image is None or (image.name, image.version) == (o.image, o.version)


RegistryMachine.TestCase.settings = settings(stateful_step_count=30)
test_image_registry_state_machine = RegistryMachine.TestCase
