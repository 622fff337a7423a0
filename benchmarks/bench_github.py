"""GitHub webhook answer time under a burst, against GitHub's 10-second delivery timeout.

`scalerunner up` with a [github] pool whose API is a local server that takes 2 s to make each JIT
config (a slow GitHub). 300 signed `workflow_job` `queued` deliveries, each a new job the pool
takes, arrive from 8 connections at once; every one starts a JIT request and a job submit behind
the answer. Figures: the p99 answer time against the 10 s GitHub gives a delivery (target: at
least 10x inside it), and the median answer time against the median of `GET /healthz` measured
side by side on the same server (what the signature check, the replay memory and the core cost).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import Figure, coordinator, free_port

DELIVERIES = 300
CONNECTIONS = 8
JIT_DELAY = 2.0
SECRET = b"bench-secret"
GITHUB_TIMEOUT = 10.0


class _SlowGitHub(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the coordinator stopped while a slow answer was pending
            pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        time.sleep(JIT_DELAY)
        runner = {"id": abs(hash(body.get("name"))) % 10**9, "name": body.get("name", ""), "busy": False}
        self._send(201, {"runner": runner, "encoded_jit_config": "eyJiZW5jaCI6IDF9"})

    def do_GET(self) -> None:  # the reconciler's listings: nothing queued
        self._send(200, {"total_count": 0, "workflow_runs": [], "jobs": []})

    def do_DELETE(self) -> None:
        self._send(404, {"message": "Not Found"})


def _payload(job_id: int) -> bytes:
    return json.dumps(
        {
            "action": "queued",
            "workflow_job": {
                "id": job_id,
                "run_id": job_id,
                "status": "queued",
                "labels": ["self-hosted", "x"],
            },
            "repository": {"full_name": "acme/widgets"},
        }
    ).encode()


def _deliver(client: httpx.Client, url: str, job_id: int) -> float:
    body = _payload(job_id)
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "workflow_job",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest(),
    }
    t0 = time.perf_counter()
    resp = client.post(url, content=body, headers=headers)
    took = time.perf_counter() - t0
    if resp.status_code != 202:
        raise RuntimeError(f"delivery {job_id}: HTTP {resp.status_code} {resp.text}")
    return took


def _healthz(client: httpx.Client, url: str, _: int) -> float:
    t0 = time.perf_counter()
    client.get(url).raise_for_status()
    return time.perf_counter() - t0


def _burst(fn: Any, url: str, ids: range) -> list[float]:
    local = threading.local()

    def one(i: int) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=30)
        took: float = fn(local.client, url, i)
        return took

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        return list(pool.map(one, ids))


def run() -> list[Figure]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowGitHub)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-github-") as tmp:
            root = Path(tmp) / "coord"
            broker = free_port()
            secrets = Path(tmp)
            (secrets / "token").write_text("t\n")
            (secrets / "secret").write_bytes(SECRET + b"\n")
            inventory = f"""
[cluster]
name = "bench"
[broker]
host = "127.0.0.1"
port = {broker}
[api]
listen = "127.0.0.1:0"
[github]
api_url = "http://127.0.0.1:{server.server_address[1]}"
token_file = "{secrets / "token"}"
webhook_secret_file = "{secrets / "secret"}"
reconcile_interval = 3600
[[github.pools]]
name = "bench"
scope = "acme/widgets"
labels = ["self-hosted", "x"]
"""
            with coordinator(root, inventory, broker) as c:
                hook = c.api + "/webhooks/github"
                _burst(_deliver, hook, range(1, 21))  # warm up (imports, connections)
                _burst(_healthz, c.api + "/healthz", range(20))
                hooks: list[float] = []
                peers: list[float] = []
                for half in (range(1000, 1000 + DELIVERIES // 2), range(2000, 2000 + DELIVERIES // 2)):
                    hooks += _burst(_deliver, hook, half)  # interleaved with the peer: same load
                    peers += _burst(_healthz, c.api + "/healthz", range(len(half)))
    finally:
        server.shutdown()
        server.server_close()
    p99 = statistics.quantiles(hooks, n=100)[98]
    return [
        Figure(
            name=f"webhook answer p99, {DELIVERIES} queued deliveries, {CONNECTIONS} connections, "
            f"JIT {JIT_DELAY:g} s",
            measured=f"{p99 * 1000:.0f} ms",
            against=f"GitHub's delivery timeout {GITHUB_TIMEOUT:g} s",
            ratio=GITHUB_TIMEOUT / p99,
            target=10.0,
        ),
        Figure(
            name="webhook answer median vs GET /healthz median, same server, side by side",
            measured=f"{statistics.median(hooks) * 1000:.1f} ms",
            against=f"/healthz {statistics.median(peers) * 1000:.1f} ms",
            ratio=statistics.median(peers) / statistics.median(hooks),
        ),
    ]
