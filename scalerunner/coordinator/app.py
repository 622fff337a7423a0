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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import uvicorn

from .. import __version__
from ..atomic import atomic_write
from .api.app import create_app
from .broker import ExternalBroker, ManagedBroker, TlsFiles
from .dashboard import Feed
from .errors import ConfigError
from .github import GitHubService
from .inventory import Inventory, Node
from .jobs.api import view as job_view
from .jobs.core import SchedulerConfig
from .jobs.manager import JobManager
from .lifecycle import BootRequested, LifecycleConfig, RequeueJobs, RunHealthCheck
from .metrics import CoordinatorCollector, link_counters, render
from .mqttlink import CoordinatorLink, MqttSettings
from .nodes import NodeManager
from .power.backends import build_backends
from .power.manager import PowerManager
from .power.metrics import PowerCollector
from .power.service import PowerService
from .pxe.base import ImageSource
from .pxe.dhcp import DnsmasqService
from .pxe.enrol import EnrolledNodes, Enroller, merge
from .pxe.http import BootServer
from .pxe.nodeinitrd import NodeSettings, settings_archive
from .pxe.registry import ImageRegistry
from .pxe.tftp import TftpTree
from .pxe.tokens import BootTokens
from .store import Event, Store, open_store

log = logging.getLogger("scalerunner.coordinator")


def load_token(state_dir: Path) -> str:
    """The API token, made once and kept (0600) so a restart does not log every client out."""
    path = state_dir / "api-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (token + "\n").encode())
    return token


def bind_api(host: str, port: int, source: str = "inventory") -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port) for the API; ConfigError if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ConfigError(source, "api.listen", f"cannot listen on {where}: {exc.strerror or exc}") from exc
    return sock


class _Service(NodeManager):
    """NodeManager plus the metrics the API serves."""

    link: CoordinatorLink | None = None
    jobs: JobManager | None = None
    power: PowerManager | None = None
    github: GitHubService | None = None
    boot: BootServer | None = None

    def metrics(self) -> bytes:
        def counters() -> dict[str, dict[str, int]]:
            return link_counters(self.link)

        extra = [self.jobs.collector()] if self.jobs is not None else []
        if self.power is not None:
            extra.append(PowerCollector(self.power))
        if self.github is not None:
            extra.append(self.github.collector())
        if self.boot is not None:
            extra.append(self.boot.collector())
        return render(CoordinatorCollector(self.views, counters), *extra)


class Coordinator:
    def __init__(
        self,
        inventory: Inventory,
        state_dir: Path,
        *,
        api_port: int | None = None,
        source: str = "inventory",
        boot_images: ImageSource | None = None,
        boot_port: int | None = None,
    ) -> None:
        self.source = source  # the inventory file, named in configuration errors
        self.state_dir = state_dir
        # Machines enrolled when they network-booted (docs/netboot.md, "Enrolment") join the
        # inventory's nodes; the inventory wins a clash of name or MAC.
        self.enrolled_file = EnrolledNodes(state_dir)
        self.enrolled = self.enrolled_file.load(inventory.cluster.name)
        inventory, skipped = merge(inventory, self.enrolled)
        for why in skipped:
            log.warning("%s: left out, the inventory wins", why, extra={"file": str(self.enrolled_file.path)})
        self.inventory = inventory
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
                raise ConfigError(source, "broker", "an external broker needs username and password_file")
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
        # node power: outlets from the inventory; the lifecycle's power actions become its tasks
        self.power = PowerManager(inventory, build_backends(inventory, source=source), self.store)
        self.power_service = PowerService(self.nodes, self.power)
        self.power_service.attach()
        self.nodes.power = self.power
        self.jobs = JobManager(
            inventory,
            self.store,
            lambda: self.nodes.records,
            state_dir,
            config=SchedulerConfig(lease_s=inventory.jobs.lease),
        )
        self.jobs.api_url = lambda: self.api_url
        self.nodes.jobs = self.jobs
        self.nodes.handle(RequeueJobs, self.jobs.requeue_node)
        self.nodes.handle(RunHealthCheck, self.jobs.run_health_check)
        self.jobs.report_check = self.nodes.check_result
        self.dashboard = Feed(
            self.nodes,
            {n.name: n.cpus for n in inventory.nodes},
            power=self.power,
            jobs=self.jobs,
            list_jobs=self._job_list,
        )
        # GitHub Actions runners (docs/github.md): only with a [github] section
        self.github = (
            GitHubService(
                inventory.github, inventory.cluster.name, self.jobs, state_dir, lambda: self.api_url
            )
            if inventory.github is not None
            else None
        )
        self.nodes.github = self.github
        # the image registry (docs/images.md): metadata in the store, blobs under state/images
        self.images = ImageRegistry(
            self.store, state_dir, nodes={n.name: (n.arch, n.boot_group) for n in inventory.nodes}
        )
        self.link: CoordinatorLink | None = None
        # Network boot (docs/netboot.md): the boot HTTP server runs only with [boot] enabled; it
        # reads images through ``boot_images`` (the image registry, or a test's own source).
        self.boot_images: ImageSource = boot_images if boot_images is not None else self.images
        self.boot_port = boot_port
        self.boot: BootServer | None = None
        self.tftp: TftpTree | None = None  # with [boot.dhcp] mode proxy or full
        self.dhcp: DnsmasqService | None = None
        self._server: uvicorn.Server | None = None
        self._stops: list[Callable[[], Awaitable[None]]] = []  # of the parts started, in order

    async def add_node(self, node: Node) -> None:
        """Make ``node`` a node of the running coordinator (an enrolled machine), without a
        restart: every part that holds the node set hears of it here, the broker first so the
        node's credentials exist before anyone can hand them out."""
        if any(n.name == node.name or n.mac == node.mac for n in self.inventory.nodes):
            raise ValueError(f"node {node.name} ({node.mac}): the name or MAC is taken")
        inventory = msgspec.structs.replace(self.inventory, nodes=(*self.inventory.nodes, node))
        if isinstance(self.broker, ManagedBroker):  # enrolment needs it (checked at load)
            await self.broker.reload([n.name for n in inventory.nodes])
        self.inventory = inventory
        self.images.add_node(node.name, node.arch, node.boot_group)
        self.power.add_node(inventory)
        self.jobs.add_node(inventory)
        self.dashboard.add_node(node.name, node.cpus)
        await self.nodes.add_node(node, inventory)
        if self.boot is not None:
            self.boot.add_node(node, inventory)
        log.info("node added", extra={"node": node.name, "mac": node.mac, "arch": node.arch})

    async def _job_list(self) -> list[dict[str, object]]:
        """The dashboard's job table: the latest jobs as the jobs API shows them."""
        jobs = await self.jobs.list_jobs(limit=50)
        return [job_view(j).model_dump(mode="json", exclude={"spec", "history"}) for j in jobs]

    @property
    def api_url(self) -> str:
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"http://{host}:{self.api_port}"

    async def start(self) -> None:
        """Start every part in dependency order. If one fails, those already started are
        stopped again (a half-started coordinator would leave its mosquitto running)."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        await self.store.start()
        self._stops.append(self.store.stop)
        await self.images.start()
        self._stops.append(self.images.stop)
        await self.power.start()  # before the nodes: their first ticks may switch power
        self._stops.append(self.power.stop)
        await self.nodes.start()
        self._stops.append(self.nodes.stop)
        await self.broker.start()
        self._stops.append(self.broker.stop)
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
            on_link=self.nodes.on_link,
            on_job_status=self.jobs.on_status,
            on_job_log=self.jobs.on_log,
            version=__version__,
        )
        self.nodes.link = self.link
        self.nodes.send_command = self.link.command
        self.jobs.send_command = self.link.command
        link = self.link
        self.jobs.ready = lambda: link.connected  # no dispatch while the broker is away
        await self.jobs.start()
        self._stops.append(self.jobs.stop)
        await self.link.start()
        self._stops.append(self.link.stop)
        if self.inventory.boot.enabled:
            await self._start_boot()
            if self.inventory.boot.dhcp.mode != "off":
                await self._start_dhcp()
        # The socket is bound here, not by uvicorn: a port in use is a ConfigError naming it
        # (uvicorn would log it and raise SystemExit), and port 0 needs no pick-then-bind race.
        sock = bind_api(self.api_host, self.api_port, self.source)
        self.api_port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            create_app(
                self.nodes,
                self.token,
                jobs=self.jobs,
                power=self.power_service,
                dashboard=self.dashboard,
                github=self.github,
                images=self.images,
            ),
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        self._server = server = uvicorn.Server(config)
        serve_task = asyncio.create_task(server.serve(sockets=[sock]), name="api")

        async def stop_api() -> None:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await serve_task
            sock.close()

        self._stops.append(stop_api)
        while not server.started:
            if serve_task.done():
                await serve_task  # raises why it could not serve
                raise ConfigError(self.source, "api.listen", f"cannot serve the API on {self.api_url}")
            await asyncio.sleep(0.02)
        # After the API: stopped before it, the feed ends the open dashboard streams, which
        # uvicorn would otherwise wait for before it lets the API stop.
        await self.dashboard.start()
        self._stops.append(self.dashboard.stop)
        if self.github is not None:  # once the API serves: its runner jobs claim configs there
            await self.github.start()
            self._stops.append(self.github.stop)
        log.info("coordinator up", extra={"api": self.api_url, "broker": access.endpoint})

    async def _start_boot(self) -> None:
        if self.boot_images is None:
            raise ConfigError(self.source, "boot.enabled", "network boot needs an image source (registry)")
        nodes, store, broker = self.nodes, self.store, self.broker

        async def on_boot(name: str, at: float) -> None:
            await nodes.apply_event(name, BootRequested(at=at))

        async def record(event: Event) -> None:
            await store.apply(None, [event])

        async def on_traded(name: str) -> None:  # a Pi's next boot needs a fresh token in its tree
            if self.tftp is not None:
                await self.tftp.token_spent(name)

        async def enrolled(name: str, reason: str) -> None:
            await store.apply(
                None, [Event(node=name, axis="boot", old="", new="enrolled", reason=reason, at=time.time())]
            )

        enroller = (
            Enroller(
                self.inventory.boot,
                self.enrolled_file,
                self.enrolled,
                nodes=lambda: self.inventory.nodes,
                add_node=self.add_node,
                record=enrolled,
            )
            if self.inventory.boot.enroll
            else None
        )

        self.boot = BootServer(
            self.inventory,
            self.boot_images,
            BootTokens(self.store, self.inventory.boot.token_ttl),
            on_boot=on_boot,
            record=record,
            password=broker.node_password,
            broker_port=lambda: broker.port,
            port=self.boot_port,
            source=self.source,
            on_traded=on_traded,
            enrol=enroller.enrol if enroller is not None else None,
        )
        await self.boot.start()
        self._stops.append(self.boot.stop)
        self.nodes.boot = self.boot  # its counters in /metrics

    async def _start_dhcp(self) -> None:
        """dnsmasq (DHCP and TFTP, docs/dhcp-tftp.md) and the TFTP tree it serves, once the boot
        HTTP server has its port (iPXE is pointed at it)."""
        assert self.boot is not None and self.boot_images is not None
        boot = msgspec.structs.replace(
            self.inventory.boot, listen=f"{self.inventory.boot.host}:{self.boot.port}"
        )
        cluster, broker = self.inventory.cluster.name, self.broker

        def settings(node: Node) -> bytes:  # a Pi's settings initrd, as the boot server serves it
            return settings_archive(
                NodeSettings.of(node, cluster=cluster, broker_host=boot.address, broker_port=broker.port)
            )

        tokens = BootTokens(self.store, boot.token_ttl)
        self.tftp = TftpTree(
            self.state_dir / "tftp",
            boot,
            self.inventory.nodes,
            self.boot_images,
            settings=settings,
            token=tokens.mint,
            token_max_age=boot.token_ttl / 2,
        )
        await self.tftp.start()
        self._stops.append(self.tftp.stop)
        self.dhcp = DnsmasqService(
            boot, self.inventory.nodes, self.state_dir, self.tftp.root, source=self.source
        )
        await self.dhcp.start()
        self._stops.append(self.dhcp.stop)

    async def stop(self) -> None:
        """Stop what was started, in reverse order; a part that fails to stop does not keep
        the others running (the first failure is raised once all were asked to stop)."""
        failure: BaseException | None = None
        while self._stops:
            stop = self._stops.pop()
            try:
                await stop()
            except Exception as exc:
                log.exception("stopping %s failed", getattr(stop, "__qualname__", stop))
                failure = failure or exc
        if failure is not None:
            raise failure
