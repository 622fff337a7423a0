"""The coordinator, composed in one place: store, broker, MQTT link, nodes, API.

Each part has ``start()``/``stop()`` and gets what it needs through its constructor;
they start in dependency order and stop in reverse. ``scalerunner up`` runs this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from pathlib import Path

import uvicorn

from .. import __version__
from .api.app import create_app
from .broker import ExternalBroker, ManagedBroker, TlsFiles
from .errors import ConfigError
from .inventory import Inventory
from .lifecycle import LifecycleConfig
from .metrics import CoordinatorCollector, render
from .mqttlink import CoordinatorLink, MqttSettings
from .nodes import NodeManager
from .store import Store, open_store

log = logging.getLogger("scalerunner.coordinator")


def load_token(state_dir: Path) -> str:
    """The API token, made once and kept (0600) so a restart does not log every client out."""
    path = state_dir / "api-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return token


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Service(NodeManager):
    """NodeManager plus the metrics the API serves."""

    link: CoordinatorLink | None = None

    def metrics(self) -> bytes:
        def counters() -> dict[str, dict[str, int]]:
            if self.link is None:
                return {}
            return {
                "messages_ingested": dict(self.link.ingested),
                "messages_rejected": dict(self.link.rejected),
                "commands": {"sent": self.link.commands_sent, "timed_out": self.link.commands_timed_out},
            }

        return render(CoordinatorCollector(self.views, counters))


class Coordinator:
    def __init__(self, inventory: Inventory, state_dir: Path, *, api_port: int | None = None) -> None:
        self.inventory = inventory
        self.state_dir = state_dir
        self.token = load_token(state_dir)
        self.api_host = inventory.api.host
        self.api_port = inventory.api.port if api_port is None else api_port
        self.store: Store = open_store(inventory.store.url)
        b = inventory.broker
        names = [n.name for n in inventory.nodes]
        if b.mode == "managed":
            tls = (
                TlsFiles(Path(b.certfile), Path(b.keyfile), Path(b.cafile) if b.cafile else None)
                if (b.certfile and b.keyfile)
                else None
            )
            self.broker: ManagedBroker | ExternalBroker = ManagedBroker(
                inventory.cluster.name, state_dir, names, host=b.host, port=b.port, tls=tls
            )
        else:
            if not (b.username and b.password_file):
                raise ConfigError(
                    "inventory", "broker", "an external broker needs username and password_file"
                )
            self.broker = ExternalBroker(
                host=b.host,
                port=b.port,
                username=b.username,
                password_file=Path(b.password_file),
                cafile=Path(b.cafile) if b.cafile else None,
                certfile=Path(b.certfile) if b.certfile else None,
                keyfile=Path(b.keyfile) if b.keyfile else None,
                tls=b.tls,
            )
        t = inventory.timeouts
        self.nodes = _Service(
            inventory,
            self.store,
            config=LifecycleConfig(boot_timeout=t.boot_timeout, telemetry_timeout=t.telemetry_timeout),
        )
        self.link: CoordinatorLink | None = None
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    async def start(self) -> None:
        await self.store.start()
        await self.nodes.start()
        await self.broker.start()
        access = self.broker.access()
        self.link = CoordinatorLink(
            MqttSettings(
                host=access.host,
                port=access.port,
                username=access.username,
                password=access.password,
                cluster=self.inventory.cluster.name,
                tls=access.tls_context(),
            ),
            known_nodes=self.nodes.known,
            on_state=self.nodes.on_state,
            on_telemetry=self.nodes.on_telemetry,
            version=__version__,
        )
        self.nodes.link = self.link
        self.nodes.send_command = self.link.command
        await self.link.start()
        if self.api_port == 0:
            self.api_port = free_port(self.api_host)
        config = uvicorn.Config(
            create_app(self.nodes, self.token),
            host=self.api_host,
            port=self.api_port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._serve_task = asyncio.create_task(self._server.serve(), name="api")
        while not self._server.started:
            if self._serve_task.done():
                await self._serve_task  # raises why it could not listen
                raise ConfigError("inventory", "api.listen", f"cannot listen on {self.api_url}")
            await asyncio.sleep(0.02)
        log.info("coordinator up", extra={"api": self.api_url, "broker": access.endpoint})

    async def stop(self) -> None:
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve_task
        if self.link is not None:
            await self.link.stop()
        await self.broker.stop()
        await self.nodes.stop()
        await self.store.stop()
