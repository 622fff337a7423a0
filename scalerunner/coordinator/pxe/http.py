"""The node-facing boot HTTP server (docs/netboot.md): iPXE scripts, image files, each node's
settings initrd, and the one-time token trade. A part with ``start()``/``stop()``.

Routes (all read-only but the trade; no bearer token - a booting node has none):

- ``GET /boot/ipxe?mac=MAC&arch=BUILDARCH`` or ``/boot/ipxe/MAC``: the node's iPXE script. A known
  MAC gets its image, a fresh token and feeds ``BootRequested`` to its lifecycle; an unknown MAC
  is enrolled when ``enrol`` is given and takes it (``arch`` is iPXE's ``${buildarch}``), else gets
  a "not enrolled" script and an event on the coordinator (node ``coordinator``, axis ``boot``);
  without a MAC, a script that asks again with iPXE's ``${net0/mac}`` and ``${buildarch}``.
- ``GET /boot/files/{sha256}/{name}``: an image file by content digest, through
  ``ImageSource.blob_path`` only; sendfile and Range come from aiohttp's ``FileResponse``. No
  part of the request becomes a path: the digest must be 64 hex digits and is looked up, the
  name is checked and otherwise ignored. Anything else is 404.
- ``GET /boot/node/{node}/settings.cpio``: the node's settings initrd (``nodeinitrd``).
- ``POST /boot/v1/credentials``: ``{"node", "token"}`` -> the node's broker credentials, once
  per token; 403 naming the node for a used, expired, wrong or malformed token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import ConfigError
from ..inventory import BootConfig, Inventory, Node
from ..store import Event
from .base import ImageSource
from .enrol import EnrolOutcome
from .ipxe import (
    SETTINGS_NAME,
    BootScriptError,
    NodeBoot,
    chain_script,
    no_image_script,
    node_script,
    normalise_mac,
    not_enrolled_script,
)
from .nodeinitrd import NodeSettings, SettingsCache
from .tokens import BootTokens, TokenRejected

__all__ = ["COORDINATOR_EVENT_NODE", "BootServer", "Credentials", "CredentialsRequest"]

log = logging.getLogger("scalerunner.coordinator.pxe.http")

COORDINATOR_EVENT_NODE = "coordinator"  # events about no node of the inventory (an unknown MAC)
UNKNOWN_MAC_EVENT_EVERY = 60.0  # s: a machine in a boot loop records one event a minute, not one a boot
PRUNE_EVERY = 60.0  # s between sweeps of expired tokens
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}$")
IPXE_TYPE = "text/plain"


class CredentialsRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    node: str
    token: str


class Credentials(msgspec.Struct, kw_only=True):
    """What a node's agent gets for its token: its broker user and where the broker is."""

    username: str
    password: str
    broker_host: str
    broker_port: int
    cluster: str


def _error(status: int, detail: str, node: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": detail}
    if node is not None:
        body["node"] = node
    return web.json_response(body, status=status)


def _script(text: str) -> web.Response:
    return web.Response(text=text, content_type=IPXE_TYPE, headers={"Cache-Control": "no-store"})


def bind(host: str, port: int, source: str = "inventory") -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port); ConfigError naming boot.listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)  # a boot storm: a rack powered on at once
    except OSError as exc:
        sock.close()
        raise ConfigError(
            source, "boot.listen", f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    return sock


class BootServer:
    """The boot HTTP server on ``boot.listen``. ``on_boot(node, at)`` steps the node's lifecycle
    with ``BootRequested``; ``record`` stores an event; ``password(node)`` is the node's broker
    password; ``broker_port()`` the broker's port (known once it started); ``on_traded(node)``,
    if given, hears of every successful trade (the TFTP tree re-mints a Pi's token then);
    ``enrol(mac, buildarch, remote)``, if given, may make an unknown MAC a node (``pxe.enrol``),
    which reaches this server through ``add_node``."""

    def __init__(
        self,
        inventory: Inventory,
        images: ImageSource,
        tokens: BootTokens,
        *,
        on_boot: Callable[[str, float], Awaitable[object]],
        record: Callable[[Event], Awaitable[object]],
        password: Callable[[str], str],
        broker_port: Callable[[], int],
        port: int | None = None,
        source: str = "inventory",
        clock: Callable[[], float] = time.time,
        on_traded: Callable[[str], Awaitable[object]] | None = None,
        enrol: Callable[[str, str | None, str], Awaitable[EnrolOutcome]] | None = None,
    ) -> None:
        self.inventory = inventory
        self.on_traded = on_traded
        self.enrol = enrol
        self.config: BootConfig = inventory.boot
        self.images = images
        self.tokens = tokens
        self.on_boot = on_boot
        self.record = record
        self.password = password
        self.broker_port = broker_port
        self.source = source
        self.clock = clock
        self.host = self.config.host
        self.port = self.config.port if port is None else port
        self._by_mac: dict[str, Node] = {n.mac.lower(): n for n in inventory.nodes}
        self._by_name: dict[str, Node] = {n.name: n for n in inventory.nodes}
        self._settings = SettingsCache()
        self._unknown_seen: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._prune: asyncio.Task[None] | None = None
        # for /metrics: scripts by what they were (node, not-enrolled, no-image), trades by outcome
        self.scripts: dict[str, int] = {"node": 0, "not-enrolled": 0, "no-image": 0}
        self.trades: dict[str, int] = {"ok": 0, "rejected": 0}
        self.fetched: dict[str, int] = {}  # file requests per stored digest (bounded by the registry)
        self.settings_fetched: dict[str, int] = {}  # settings initrds per node

    def add_node(self, node: Node, inventory: Inventory) -> None:
        """A node joined at runtime (an enrolled machine): its MAC gets its script from now on."""
        self.inventory = inventory
        self._by_mac[node.mac.lower()] = node
        self._by_name[node.name] = node

    @property
    def base_url(self) -> str:
        """The boot server as nodes reach it (the advertised address)."""
        return f"http://{self.config.address}:{self.port}"

    def collector(self) -> Collector:
        return _BootCollector(self)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4096)  # the only body is the trade's small JSON
        app.router.add_get("/boot/ipxe", self._ipxe)
        app.router.add_get("/boot/ipxe/{mac}", self._ipxe)
        app.router.add_get("/boot/files/{digest}/{name}", self._file)
        app.router.add_get("/boot/node/{node}/" + SETTINGS_NAME, self._node_settings)
        app.router.add_post("/boot/v1/credentials", self._credentials)
        return app

    async def start(self) -> None:
        sock = bind(self.host, self.port, self.source)
        self.port = int(sock.getsockname()[1])
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._prune = asyncio.create_task(self._pruner(), name="boot-token-prune")
        log.info("boot server up", extra={"listen": f"{self.host}:{self.port}", "url": self.base_url})

    async def stop(self) -> None:
        if self._prune is not None:
            self._prune.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune
            self._prune = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _pruner(self) -> None:
        while True:
            try:
                await self.tokens.prune()
            except Exception as exc:  # the store may be briefly unwell; the next sweep retries
                log.warning("pruning boot tokens failed: %s", exc)
            await asyncio.sleep(PRUNE_EVERY)

    # -- iPXE scripts ------------------------------------------------------------------------

    async def _ipxe(self, request: web.Request) -> web.Response:
        raw = request.match_info.get("mac") or request.query.get("mac")
        if not raw:
            return _script(chain_script(self.base_url))
        try:
            mac = normalise_mac(raw)
        except BootScriptError as exc:
            return _error(400, str(exc))
        node = self._by_mac.get(mac)
        refusal = ""
        if node is None and self.enrol is not None:
            try:
                outcome = await self.enrol(mac, request.query.get("arch"), request.remote or "?")
            except Exception as exc:  # e.g. the state dir is full: the machine is told, nothing half-made
                log.exception("enrolling %s failed", mac, extra={"mac": mac})
                outcome = EnrolOutcome(None, f"the coordinator could not enrol it ({type(exc).__name__})")
            node, refusal = outcome.node, outcome.refusal
        if node is None:
            self.scripts["not-enrolled"] += 1
            await self._unknown(mac, request.remote or "?", refusal)
            return _script(not_enrolled_script(mac, self.inventory.cluster.name, refusal))
        now = self.clock()
        image = await self.images.resolve(node.name, node.arch, node.boot_group)
        if image is None or image.kernel is None:
            self.scripts["no-image"] += 1
            await self._event(node.name, "no-image", f"PXE boot request from {mac}: no image to boot", now)
            return _script(no_image_script(node.name, mac, node.arch, node.boot_group))
        token = await self.tokens.mint(node.name)
        script = node_script(NodeBoot(node.name, mac, image, self.base_url, token))
        try:
            await self.on_boot(node.name, now)
        except Exception as exc:  # a failed lifecycle step must not stop the node from booting
            log.warning("%s: boot request not applied: %s", node.name, exc, extra={"node": node.name})
        await self._event(
            node.name,
            "script",
            f"iPXE script served to {mac}: {image.name} {image.version}, token minted",
            now,
        )
        self.scripts["node"] += 1
        log.info(
            "iPXE script served",
            extra={"node": node.name, "mac": mac, "image": image.name, "version": image.version},
        )
        return _script(script)

    async def _unknown(self, mac: str, remote: str, refusal: str = "") -> None:
        now = self.clock()
        last = self._unknown_seen.get(mac)
        log.info("boot request from an unknown MAC", extra={"mac": mac, "remote": remote})
        if last is not None and now - last < UNKNOWN_MAC_EVENT_EVERY:
            return
        if len(self._unknown_seen) > 4096:  # bounded: a flood of made-up MACs cannot grow it
            self._unknown_seen.clear()
        self._unknown_seen[mac] = now
        await self._event(
            COORDINATOR_EVENT_NODE,
            "not-enrolled",
            f"PXE boot request from unknown MAC {mac} ({remote}): not in the inventory"
            + (f", not enrolled: {refusal}" if refusal else "")
            + ", sent the not-enrolled script",
            now,
        )

    async def _event(self, node: str, new: str, reason: str, at: float) -> None:
        try:
            await self.record(Event(node=node, axis="boot", old="", new=new, reason=reason, at=at))
        except Exception as exc:
            log.warning("cannot record boot event: %s", exc, extra={"node": node})

    # -- files -------------------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.StreamResponse:
        digest, name = request.match_info["digest"], request.match_info["name"]
        if not _DIGEST.match(digest) or not _NAME.match(name):
            raise web.HTTPNotFound()
        try:
            path = self.images.blob_path(digest)
        except KeyError:
            raise web.HTTPNotFound() from None
        if not path.is_file():
            raise web.HTTPNotFound()
        self.fetched[digest] = self.fetched.get(digest, 0) + 1
        # Content-addressed: a digest's bytes never change, so caches may keep them forever.
        return web.FileResponse(
            path,
            chunk_size=1 << 20,
            headers={
                "Content-Type": "application/octet-stream",
                "Cache-Control": "public, max-age=31536000, immutable",
            },
        )

    async def _node_settings(self, request: web.Request) -> web.Response:
        node = self._by_name.get(request.match_info["node"])
        if node is None:
            raise web.HTTPNotFound()
        settings = NodeSettings.of(
            node,
            cluster=self.inventory.cluster.name,
            broker_host=self.config.address,
            broker_port=self.broker_port(),
        )
        data, etag = self._settings.get(settings)
        self.settings_fetched[node.name] = self.settings_fetched.get(node.name, 0) + 1
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"ETag": f'"{etag}"', "Cache-Control": "no-cache"},
        )

    # -- the token trade ---------------------------------------------------------------------

    async def _credentials(self, request: web.Request) -> web.Response:
        try:
            req = msgspec.json.decode(await request.read(), type=CredentialsRequest)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "request too large")
        except msgspec.ValidationError as exc:
            return _error(400, f"bad credentials request: {exc}")
        except msgspec.DecodeError as exc:
            return _error(400, f"bad credentials request: not JSON ({exc})")
        node = self._by_name.get(req.node)
        if node is None:
            self.trades["rejected"] += 1
            return _error(403, f"node {req.node[:64]!r} is not in the inventory", req.node[:64])
        try:
            await self.tokens.trade(node.name, req.token)
        except TokenRejected as exc:
            self.trades["rejected"] += 1
            log.warning("token trade refused: %s", exc.detail, extra={"node": node.name})
            await self._event(node.name, "token-refused", exc.detail, self.clock())
            return _error(403, str(exc), node.name)
        try:
            password = self.password(node.name)
        except Exception as exc:  # the token is spent: the node must reboot for a new one
            log.error("no broker password for %s: %s", node.name, exc, extra={"node": node.name})
            return _error(
                503, f"node {node.name}: its broker credentials are not available: {exc}", node.name
            )
        self.trades["ok"] += 1
        if self.on_traded is not None:
            try:
                await self.on_traded(node.name)
            except Exception:  # the node has its credentials; a late re-mint is the tree's poll's
                log.exception("after the token trade of %s", node.name, extra={"node": node.name})
        await self._event(node.name, "token-traded", "boot token traded for broker credentials", self.clock())
        log.info("boot token traded", extra={"node": node.name, "remote": request.remote})
        answer = Credentials(
            username=node.name,
            password=password,
            broker_host=self.config.address,
            broker_port=self.broker_port(),
            cluster=self.inventory.cluster.name,
        )
        return web.Response(
            body=msgspec.json.encode(answer),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )


class _BootCollector(Collector):
    def __init__(self, server: BootServer) -> None:
        self._server = server

    def collect(self) -> Iterable[Metric]:
        scripts = CounterMetricFamily(
            "scalerunner_boot_scripts", "iPXE scripts served, by kind", labels=["kind"]
        )
        for kind, n in sorted(self._server.scripts.items()):
            scripts.add_metric([kind], float(n))
        trades = CounterMetricFamily(
            "scalerunner_boot_token_trades", "boot token trades, by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(self._server.trades.items()):
            trades.add_metric([outcome], float(n))
        yield from (scripts, trades)
