"""A throwaway layer-2 network for DHCP/TFTP tests: a network namespace holding a bridge, with
a veth to the host (where the coordinator's dnsmasq listens) and as many client ports as a test
wants. Needs root (``ip netns``); everything is removed on exit, whatever happened.

    with NetLab() as lab:                  # host side: lab.host_if with lab.server_ip
        lab.add_port("cli0")               # a client's interface inside the namespace
        replies = lab.dhcp("cli0", packet) # a DHCP exchange from that port

Sockets for the namespace are made by a thread that joined it with setns(2) (a network
namespace is per thread), so the test itself stays in the host's namespace.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from tests import dhcp_wire

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def available() -> str | None:
    """Why this machine cannot run the lab, or None if it can."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.128.0.0/9 that no interface of the host uses."""
    used = [
        ipaddress.IPv4Interface(f.split()[3]).network
        for f in _ip("-4", "-o", "addr", "show").stdout.splitlines()
        if len(f.split()) > 3 and f.split()[2] == "inet"
    ]
    while True:
        net = ipaddress.IPv4Network(f"10.{random.randint(128, 254)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net


class NetLab:
    def __init__(self, tag: str = "b") -> None:
        uid = secrets.token_hex(3)
        self.ns = f"sr{tag}-{uid}"
        self.host_if = f"sr{tag}{uid}h"  # at most 15 characters (IFNAMSIZ)
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        self.server_ip = str(hosts[0])  # the host side: the coordinator
        self.spare_ips = [str(h) for h in hosts[1:10]]  # for other servers on the link
        self.procs: list[subprocess.Popen[bytes]] = []
        self.extra_ns: list[str] = []

    # -- set-up and tear-down ---------------------------------------------------------------

    def __enter__(self) -> NetLab:
        try:
            _ip("netns", "add", self.ns)
            _ip("-n", self.ns, "link", "set", "lo", "up")
            _ip("-n", self.ns, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
            _ip("-n", self.ns, "link", "set", "br0", "up")
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "hostp", "netns", self.ns)
            _ip("-n", self.ns, "link", "set", "hostp", "master", "br0", "up")
            _ip("addr", "add", f"{self.server_ip}/{self.subnet.prefixlen}", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in self.extra_ns:
            _ip("netns", "del", ns, check=False)
        _ip("netns", "del", self.ns, check=False)  # takes the veth peers with it
        _ip("link", "del", self.host_if, check=False)

    def add_port(
        self, name: str, address: str | None = None, mac: str | None = None, *, own_ns: bool = False
    ) -> str:
        """A client interface ``name`` on the bridge (its peer ``name``+p); the namespace it is in.

        ``own_ns``: in a namespace of its own (``<ns>-<name>``), for a server whose clients sit in
        the lab's namespace (Linux drops a packet whose source address is one of its own).
        """
        _ip("-n", self.ns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        _ip("-n", self.ns, "link", "set", f"{name}p", "master", "br0", "up")
        ns = self.ns
        if own_ns:
            ns = f"{self.ns}-{name}"
            _ip("netns", "add", ns)
            self.extra_ns.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.ns, "link", "set", name, "netns", ns)
        if mac is not None:
            _ip("-n", ns, "link", "set", name, "address", mac)
        if address is not None:
            _ip("-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", name)
        _ip("-n", ns, "link", "set", name, "up")
        return ns

    def popen(
        self, argv: Sequence[str], *, ns: str | None = None, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        """A process inside the namespace (or ``ns``), stopped at close()."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            ["ip", "netns", "exec", ns or self.ns, *argv], **kwargs
        )  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv], capture_output=True, timeout=timeout, check=False
        )

    # -- inside the namespace ---------------------------------------------------------------

    def inside(self, fn: Callable[[], T]) -> T:
        """``fn()`` run by a thread that has joined the namespace."""
        result: list[T] = []
        error: list[BaseException] = []

        def body() -> None:
            try:
                fd = os.open(f"/var/run/netns/{self.ns}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns({self.ns})")
                finally:
                    os.close(fd)
                result.append(fn())
            except BaseException as exc:
                error.append(exc)

        t = threading.Thread(target=body, name=f"netns-{self.ns}")
        t.start()
        t.join()
        if error:
            raise error[0]
        return result[0]

    def udp_socket(self, port_if: str, bind: tuple[str, int]) -> socket.socket:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, port_if.encode())
            s.bind(bind)
            return s

        return self.inside(make)

    def dhcp(
        self, port_if: str, packet: dhcp_wire.Packet, *, wait: float = 3.0, until: int | None = None
    ) -> list[tuple[str, dhcp_wire.Packet]]:
        """Broadcast ``packet`` from ``port_if`` (port 68) and collect every reply to its xid
        for ``wait`` seconds (or until ``until`` replies came): (sender address, packet)."""
        sock = self.udp_socket(port_if, ("0.0.0.0", 68))
        replies: list[tuple[str, dhcp_wire.Packet]] = []
        try:
            sock.sendto(dhcp_wire.build(packet), ("255.255.255.255", 67))
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0 and (until is None or len(replies) < until):
                sock.settimeout(left)
                try:
                    raw, addr = sock.recvfrom(4096)
                except TimeoutError:
                    break
                try:
                    reply = dhcp_wire.parse(raw)
                except ValueError:
                    continue
                if reply.op == 2 and reply.xid == packet.xid:
                    replies.append((addr[0], reply))
        finally:
            sock.close()
        return replies
