"""Boot storm: 42 nodes fetch the same kernel and initrd at once, from the coordinator's boot
server and from nginx serving the same files on the same machine, side by side.

Files: the guest kernel (Debian's cloud vmlinuz, ~14 MB) and a 30 MB initrd (random bytes, the
size of a small node image). Clients: one curl with 42 parallel transfers per file, so the load
generator is C and the same for both servers. nginx (Debian's) runs with its own config and temp
directories on a free loopback port, ``sendfile on`` and one worker process, like the boot
server's one asyncio process. Rounds alternate between the two; the figure is the median
aggregate throughput of the boot server as a ratio of nginx's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, free_port, stop, wait_port
from scalerunner.nodeagent.runtime.vm_guest import GuestKernel

CLIENTS = 42
ROUNDS = 5
INITRD_MB = 30
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin") or "nginx"
CURL = shutil.which("curl") or "curl"
REPO = Path(__file__).resolve().parents[1]

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def _storm(urls: list[str]) -> float:
    """Every URL fetched by each of CLIENTS clients at once; aggregate bytes/s."""
    args = [
        CURL,
        "-s",
        "--no-progress-meter",
        "--fail",
        "-Z",
        "--parallel-max",
        str(CLIENTS * len(urls)),
        "--parallel-immediate",
    ]
    for _ in range(CLIENTS):
        for url in urls:
            args += ["-o", "/dev/null", url]
    start = time.perf_counter()
    subprocess.run(args, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run() -> list[Figure]:
    kernel = GuestKernel.find(REPO / ".cache" / "guest").vmlinuz
    with tempfile.TemporaryDirectory(prefix="bench-bootstorm-") as tmp_s:
        tmp = Path(tmp_s)
        blobs = tmp / "blobs"
        blobs.mkdir()
        files: list[tuple[str, str, int]] = []  # (digest, name, size)
        for name, data in (("vmlinuz", kernel.read_bytes()), ("initrd.img", os.urandom(INITRD_MB << 20))):
            digest = hashlib.sha256(data).hexdigest()
            (blobs / digest).write_bytes(data)
            files.append((digest, name, len(data)))
        # nginx serves the same bytes at the same paths
        www = tmp / "www"
        for digest, name, _ in files:
            (www / "boot" / "files" / digest).mkdir(parents=True)
            os.link(blobs / digest, www / "boot" / "files" / digest / name)
        ngx_port, boot_port = free_port(), free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=ngx_port, root=www))
        total = CLIENTS * sum(size for _, _, size in files)
        ngx = boot = None
        try:
            ngx = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(conf)], stderr=subprocess.PIPE)
            boot = subprocess.Popen(
                [sys.executable, "-m", "benchmarks._bootstorm_server", str(blobs), str(boot_port)],
                stdout=subprocess.PIPE,
                cwd=REPO,
            )
            wait_port(ngx_port, 10)
            wait_port(boot_port, 20)
            paths = [f"/boot/files/{d}/{n}" for d, n, _ in files]
            urls = {
                "boot": [f"http://127.0.0.1:{boot_port}{p}" for p in paths],
                "nginx": [f"http://127.0.0.1:{ngx_port}{p}" for p in paths],
            }
            _storm(urls["boot"][:1])  # warm the page cache and both servers
            _storm(urls["nginx"][:1])
            times: dict[str, list[float]] = {"boot": [], "nginx": []}
            for i in range(ROUNDS):
                order = ("boot", "nginx") if i % 2 == 0 else ("nginx", "boot")
                for who in order:
                    times[who].append(_storm(urls[who]))
        finally:
            stop(boot)
            stop(ngx, grace=5)
    rate = {who: total / statistics.median(t) / 1e6 for who, t in times.items()}
    return [
        Figure(
            name=f"boot storm: {CLIENTS} clients x (kernel {files[0][2] >> 20} MB + initrd {INITRD_MB} MB)",
            measured=f"boot server {rate['boot']:.0f} MB/s aggregate",
            against=f"nginx {rate['nginx']:.0f} MB/s (sendfile, 1 worker)",
            ratio=rate["boot"] / rate["nginx"],
        )
    ]
