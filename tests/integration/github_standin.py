"""A local HTTP server standing in for GitHub: the REST API the coordinator calls, the side a
runner talks to, and the webhook deliveries GitHub would send (signed like GitHub's).

It records every request. Workflow jobs are held here; a runner that polls (``fake_runner.py``)
is handed the first queued job whose labels its registration carries, as GitHub does, and the
stand-in then delivers ``workflow_job`` ``in_progress`` and ``completed`` webhooks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt


@dataclass
class WJob:
    id: int
    run_id: int
    repo: str
    labels: list[str]
    status: str = "queued"  # queued, in_progress, completed
    conclusion: str | None = None
    runner_name: str | None = None
    runner_id: int | None = None
    duration: float = 0.3  # s the runner "works" on it
    hold: bool = False  # never handed to a runner (a job another fleet takes, say)


@dataclass
class RegRunner:
    id: int
    name: str
    labels: list[str]
    group: int
    scope: str
    busy: bool = False
    status: str = "offline"
    job: int | None = None
    deleted: bool = False


@dataclass
class Request:
    method: str
    path: str
    body: Any
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class GitHubStandIn:
    def __init__(self, secret: bytes, token: str) -> None:
        self.secret = secret
        self.token = token
        self.webhook_url = ""  # the coordinator's /webhooks/github
        self.jobs: dict[int, WJob] = {}
        self.runners: dict[int, RegRunner] = {}
        self.requests: list[Request] = []
        self.deliveries: list[tuple[str, str, int]] = []  # (delivery id, action, HTTP status)
        self.down = False  # answer 503 to every API call
        self.delay = 0.0  # s before answering generate-jitconfig
        self.fail_with: tuple[int, dict[str, str], str] | None = None  # (status, headers, message) once
        self.app: tuple[int, int, bytes] | None = None  # (app id, installation id, public key PEM)
        self.token_life = 3600.0  # s an installation token lives
        self.issued: list[str] = []  # installation tokens handed out
        self.lock = threading.RLock()
        self._ids = itertools.count(1000)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what a test does --------------------------------------------------------------------

    def add_job(self, job_id: int, repo: str, labels: list[str], **kw: Any) -> WJob:
        with self.lock:
            job = self.jobs[job_id] = WJob(id=job_id, run_id=job_id * 10, repo=repo, labels=labels, **kw)
        return job

    def jit_requests(self, name_part: str = "") -> list[Request]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r.path.endswith("/generate-jitconfig") and r.method == "POST" and name_part in str(r.body)
            ]

    def payload(self, job: WJob, action: str) -> dict[str, Any]:
        owner = job.repo.split("/")[0]
        return {
            "action": action,
            "workflow_job": {
                "id": job.id,
                "run_id": job.run_id,
                "name": f"build-{job.id}",
                "status": job.status,
                "conclusion": job.conclusion,
                "labels": job.labels,
                "runner_id": job.runner_id,
                "runner_name": job.runner_name,
                "runner_group_id": 1 if job.runner_id else None,
                "html_url": f"https://github.com/{job.repo}/actions/runs/{job.run_id}/job/{job.id}",
            },
            "repository": {"full_name": job.repo, "name": job.repo.split("/")[1], "owner": {"login": owner}},
            "organization": {"login": owner},
            "sender": {"login": "octocat"},
        }

    def deliver(
        self,
        job: WJob,
        action: str,
        *,
        delivery: str | None = None,
        secret: bytes | None = None,
        signature: str | None = "auto",
    ) -> httpx.Response:
        """POST one ``workflow_job`` delivery to the coordinator, signed as GitHub signs it."""
        body = json.dumps(self.payload(job, action)).encode()
        delivery = delivery or str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "workflow_job",
            "X-GitHub-Delivery": delivery,
            "User-Agent": "GitHub-Hookshot/standin",
        }
        if signature == "auto":
            mac = hmac.new(secret or self.secret, body, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = f"sha256={mac}"
        elif signature is not None:
            headers["X-Hub-Signature-256"] = signature
        resp = httpx.post(self.webhook_url, content=body, headers=headers, timeout=15)
        with self.lock:
            self.deliveries.append((delivery, action, resp.status_code))
        return resp

    def cancel(self, job_id: int) -> None:
        """Cancel a workflow job on "GitHub": completed/cancelled, and its webhook."""
        with self.lock:
            job = self.jobs[job_id]
            job.status, job.conclusion = "completed", "cancelled"
            runner = self.runners.get(job.runner_id or -1)
            if runner is not None:
                runner.busy = False
        self.deliver(job, "completed")

    # -- the runner's side (fake_runner.py) --------------------------------------------------

    def _poll(self, runner_id: int) -> dict[str, Any]:
        with self.lock:
            runner = self.runners.get(runner_id)
            if runner is None or runner.deleted:
                return {"gone": True}
            runner.status = "online"
            if runner.job is not None:
                job = self.jobs[runner.job]
                return {"job": job.id, "duration": job.duration, "status": job.status}
            have = {label.lower() for label in runner.labels}
            for job in self.jobs.values():
                if job.status == "queued" and not job.hold and {x.lower() for x in job.labels} <= have:
                    job.status, job.runner_name, job.runner_id = "in_progress", runner.name, runner.id
                    runner.job, runner.busy = job.id, True
                    break
            else:
                return {}
        self.deliver(job, "in_progress")
        return {"job": job.id, "duration": job.duration, "status": job.status}

    def _done(self, runner_id: int) -> None:
        with self.lock:
            runner = self.runners[runner_id]
            job = self.jobs[runner.job] if runner.job is not None else None
            runner.busy, runner.deleted = False, True  # an ephemeral runner is removed after its job
            if job is None or job.status != "in_progress":
                return
            job.status, job.conclusion = "completed", "success"
        self.deliver(job, "completed")

    # -- HTTP ----------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                path = self.path
                if not path.startswith("/_runner/"):
                    with standin.lock:
                        standin.requests.append(Request(method, path, body, dict(self.headers.items())))
                    if standin.down:
                        return self._answer(503, {"message": "Service Unavailable"})
                    with standin.lock:
                        fail, standin.fail_with = standin.fail_with, None
                    if fail is not None:
                        return self._answer(fail[0], {"message": fail[2]}, fail[1])
                    bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                    if "/access_tokens" in path:
                        status, answer = standin._access_token(path, bearer)
                        return self._answer(status, answer)
                    with standin.lock:
                        known = bearer == standin.token or bearer in standin.issued
                    if not known:
                        return self._answer(401, {"message": "Bad credentials"})
                status, answer = standin._route(method, path, body)
                self._answer(status, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return Handler

    def _access_token(self, path: str, assertion: str) -> tuple[int, Any]:
        """``POST /app/installations/ID/access_tokens`` with the App's RS256 JWT."""
        if self.app is None:
            return 404, {"message": "Not Found"}
        app_id, installation, public_key = self.app
        if path != f"/app/installations/{installation}/access_tokens":
            return 404, {"message": "Not Found"}
        try:
            claims = jwt.decode(
                assertion, public_key, algorithms=["RS256"], options={"require": ["iat", "exp", "iss"]}
            )
        except jwt.PyJWTError as exc:
            return 401, {"message": f"A JSON web token could not be decoded: {exc}"}
        if claims["iss"] != str(app_id) or claims["exp"] - claims["iat"] > 600:
            return 401, {"message": "'Issuer' claim ('iss') or expiry is wrong"}
        token = f"ghs_{uuid.uuid4().hex}"
        expires = datetime.fromtimestamp(time.time() + self.token_life, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.lock:
            self.issued.append(token)
        return 201, {"token": token, "expires_at": expires, "permissions": {"administration": "write"}}

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        base = path.split("?", 1)[0]
        scope = r"/(?P<scope>orgs/[^/]+|repos/[^/]+/[^/]+)"
        if m := re.fullmatch(r"/_runner/(\d+)/(poll|done)", base):
            if m.group(2) == "poll":
                return 200, self._poll(int(m.group(1)))
            self._done(int(m.group(1)))
            return 200, {}
        if method == "POST" and (m := re.fullmatch(scope + r"/actions/runners/generate-jitconfig", base)):
            if self.delay:
                time.sleep(self.delay)
            with self.lock:
                rid = next(self._ids)
                if any(r.name == body["name"] for r in self.runners.values()):
                    return 409, {"message": "Already exists - A runner with the same name already exists."}
                self.runners[rid] = RegRunner(
                    rid, body["name"], body["labels"], body["runner_group_id"], m.group("scope")
                )
            config = {"url": self.url, "runner_id": rid, "name": body["name"], "secret": uuid.uuid4().hex}
            encoded = base64.b64encode(json.dumps(config).encode()).decode()
            return 201, {
                "runner": {"id": rid, "name": body["name"], "status": "offline", "busy": False},
                "encoded_jit_config": encoded,
            }
        if m := re.fullmatch(scope + r"/actions/runners/(\d+)", base):
            with self.lock:
                runner = self.runners.get(int(m.group(2)))
                if runner is None or runner.deleted:
                    return 404, {"message": "Not Found"}
                if method == "DELETE":
                    runner.deleted = True
                    return 204, None
                return 200, {
                    "id": runner.id,
                    "name": runner.name,
                    "status": runner.status,
                    "busy": runner.busy,
                }
        if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/runs", base):
            want = re.search(r"status=(\w+)", path)
            with self.lock:
                runs = sorted(
                    {
                        j.run_id
                        for j in self.jobs.values()
                        if j.repo == m.group(1) and want is not None and j.status == want.group(1)
                    }
                )
            return 200, {
                "total_count": len(runs),
                "workflow_runs": [{"id": r, "status": want.group(1) if want else ""} for r in runs],
            }
        if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/runs/(\d+)/jobs", base):
            with self.lock:
                jobs = [j for j in self.jobs.values() if j.repo == m.group(1) and j.run_id == int(m.group(2))]
                out = [{"id": j.id, "run_id": j.run_id, "status": j.status, "labels": j.labels} for j in jobs]
            return 200, {"total_count": len(out), "jobs": out}
        if m := re.fullmatch(r"/orgs/([^/]+)/repos", base):
            with self.lock:
                repos = sorted({j.repo for j in self.jobs.values() if j.repo.startswith(m.group(1) + "/")})
            return 200, [{"full_name": r, "archived": False} for r in repos]
        return 404, {"message": "Not Found"}
