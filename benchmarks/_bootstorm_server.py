"""The boot server alone, for bench_bootstorm: ``python -m benchmarks._bootstorm_server BLOBS PORT``
serves the files under BLOBS (named by their sha256) at /boot/files/{sha256}/{name}, through the
same ``BootServer`` the coordinator runs. Prints "ready" once it listens; SIGTERM stops it."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from pathlib import Path

from scalerunner.coordinator.inventory import loads_inventory
from scalerunner.coordinator.pxe.base import BootImage
from scalerunner.coordinator.pxe.http import BootServer
from scalerunner.coordinator.pxe.tokens import BootTokens
from scalerunner.coordinator.store import Event
from scalerunner.coordinator.store.sqlite import SqliteStore

INVENTORY = """
[cluster]
name = "bench"
[boot]
enabled = true
listen = "127.0.0.1:{port}"
"""


class Blobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    async def resolve(self, node: str, arch: str, group: str) -> BootImage | None:
        return None

    def blob_path(self, digest: str) -> Path:
        path = self.root / digest
        if not path.is_file():
            raise KeyError(digest)
        return path


async def main(root: Path, port: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        inventory = loads_inventory(INVENTORY.format(port=port), Path(tmp) / "scalerunner.toml")
        async with SqliteStore(Path(tmp) / "s.db", flush_interval=None) as store:

            async def nothing(*_: object) -> None:
                return None

            async def record(_: Event) -> None:
                return None

            server = BootServer(
                inventory,
                Blobs(root),
                BootTokens(store, 60),
                on_boot=nothing,
                record=record,
                password=lambda node: "",
                broker_port=lambda: 1883,
            )
            await server.start()
            print("ready", flush=True)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
