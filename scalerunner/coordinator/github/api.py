"""The few GitHub REST API calls the runners need (httpx, async).

A scope is where runners register: an organisation (``ORG``) or a repository (``OWNER/REPO``).
Every call sends the token from ``token_file`` (read again when the file changes, so an
installation token can be rotated by another process), ``Accept: application/vnd.github+json``
and the API version header. Every failure is a ``GitHubApiError`` naming the endpoint, the
HTTP status and GitHub's own message; a rate limit says when it resets.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec

__all__ = [
    "API_VERSION",
    "AppCredentials",
    "GitHubApi",
    "GitHubApiError",
    "JitConfig",
    "QueuedJob",
    "RunnerInfo",
    "scope_path",
]

API_VERSION = "2022-11-28"
MAX_PAGES = 20  # of 100 items: a bound on one listing
TOKEN_MARGIN = 300.0  # s: an installation token is renewed this long before it expires


class GitHubApiError(Exception):
    """A REST call that failed: ``status`` is None when GitHub could not be reached."""

    def __init__(self, endpoint: str, status: int | None, detail: str, retry_after: float | None = None):
        where = f"{endpoint}: HTTP {status}" if status is not None else endpoint
        super().__init__(f"GitHub API {where}: {detail}")
        self.endpoint = endpoint
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class AppCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """A GitHub App installation: the App's RS256 JWT (signed with its private key) is traded
    for an installation token (an hour's life), renewed before it runs out."""

    app_id: int
    installation_id: int
    private_key_file: Path


class _InstallationToken(msgspec.Struct, kw_only=True):
    token: str
    expires_at: str


class _Runner(msgspec.Struct, kw_only=True):
    id: int
    name: str = ""
    status: str = ""
    busy: bool = False


class _JitAnswer(msgspec.Struct, kw_only=True):
    runner: _Runner
    encoded_jit_config: str


class JitConfig(msgspec.Struct, frozen=True, kw_only=True):
    runner_id: int
    name: str
    encoded: str  # the secret the runner starts with: never logged

    def __repr__(self) -> str:
        return f"JitConfig(runner_id={self.runner_id}, name={self.name!r}, encoded='***')"


class RunnerInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    status: str  # online / offline
    busy: bool


class QueuedJob(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    run_id: int
    repo: str
    labels: tuple[str, ...]


class _Job(msgspec.Struct, kw_only=True):
    id: int
    run_id: int = 0
    status: str = ""
    labels: list[str] = []


class _Jobs(msgspec.Struct, kw_only=True):
    jobs: list[_Job] = []


class _Run(msgspec.Struct, kw_only=True):
    id: int


class _Runs(msgspec.Struct, kw_only=True):
    workflow_runs: list[_Run] = []


class _Repo(msgspec.Struct, kw_only=True):
    full_name: str
    archived: bool = False


def scope_path(scope: str) -> str:
    """``ORG`` -> ``orgs/ORG``, ``OWNER/REPO`` -> ``repos/OWNER/REPO``."""
    return f"repos/{scope}" if "/" in scope else f"orgs/{scope}"


class GitHubApi:
    """``start()``/``stop()`` open and close the HTTP client."""

    def __init__(
        self,
        base_url: str,
        token_file: Path | None,
        *,
        app: AppCredentials | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if (token_file is None) == (app is None):
            raise ValueError("give a token file or a GitHub App, exactly one")
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self.app = app
        self.timeout = timeout
        self.app_tokens_made = 0
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._token: tuple[tuple[int, int], str] | None = None
        self._app_token: tuple[str, float] | None = None  # (token, expires at, epoch s)
        self._app_lock = asyncio.Lock()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeout,
            transport=self._transport,
            headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION},
        )

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the calls ---------------------------------------------------------------------------

    async def generate_jitconfig(
        self, scope: str, name: str, runner_group_id: int, labels: list[str], work_folder: str = "_work"
    ) -> JitConfig:
        """Register a just-in-time runner ``name`` (one job, then it is removed by GitHub)."""
        body = {
            "name": name,
            "runner_group_id": runner_group_id,
            "labels": labels,
            "work_folder": work_folder,
        }
        data = await self._call("POST", f"/{scope_path(scope)}/actions/runners/generate-jitconfig", json=body)
        answer = self._convert(data, _JitAnswer, "generate-jitconfig")
        return JitConfig(
            runner_id=answer.runner.id, name=answer.runner.name, encoded=answer.encoded_jit_config
        )

    async def get_runner(self, scope: str, runner_id: int) -> RunnerInfo | None:
        """The runner's status, or None if GitHub no longer knows it (an ephemeral one is gone
        after its job)."""
        try:
            data = await self._call("GET", f"/{scope_path(scope)}/actions/runners/{runner_id}")
        except GitHubApiError as exc:
            if exc.status == 404:
                return None
            raise
        r = self._convert(data, _Runner, "runner")
        return RunnerInfo(id=r.id, name=r.name, status=r.status, busy=r.busy)

    async def delete_runner(self, scope: str, runner_id: int) -> bool:
        """Remove a registration; False if it was gone already."""
        try:
            await self._call("DELETE", f"/{scope_path(scope)}/actions/runners/{runner_id}")
        except GitHubApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def org_repositories(self, org: str) -> list[str]:
        """Every repository of ``org`` that is not archived (``OWNER/REPO``)."""
        out: list[str] = []
        async for page in self._pages(f"/orgs/{org}/repos"):
            out += [r.full_name for r in self._convert(page, list[_Repo], "repos") if not r.archived]
        return out

    async def queued_jobs(self, repo: str) -> list[QueuedJob]:
        """The queued jobs of ``repo``: of its queued and in-progress workflow runs (a run in
        progress may hold jobs that still wait for a runner)."""
        run_ids: list[int] = []
        for status in ("queued", "in_progress"):
            async for page in self._pages(f"/repos/{repo}/actions/runs", {"status": status}):
                run_ids += [r.id for r in self._convert(page, _Runs, "runs").workflow_runs]
        found: list[QueuedJob] = []
        for run_id in dict.fromkeys(run_ids):
            async for page in self._pages(f"/repos/{repo}/actions/runs/{run_id}/jobs", {"filter": "latest"}):
                for j in self._convert(page, _Jobs, "jobs").jobs:
                    if j.status == "queued":
                        found.append(
                            QueuedJob(id=j.id, run_id=j.run_id or run_id, repo=repo, labels=tuple(j.labels))
                        )
        return found

    # -- plumbing ----------------------------------------------------------------------------

    async def bearer(self) -> str:
        """The token to send: the token file's, or a live installation token of the App."""
        if self.app is None:
            return self.token()
        async with self._app_lock:
            if self._app_token is None or self._app_token[1] - TOKEN_MARGIN <= time.time():
                self._app_token = await self._installation_token(self.app)
            return self._app_token[0]

    async def _installation_token(self, app: AppCredentials) -> tuple[str, float]:
        path = f"/app/installations/{app.installation_id}/access_tokens"
        try:
            key = await asyncio.to_thread(app.private_key_file.read_bytes)
            now = int(time.time())
            # iat a minute back for clock drift; GitHub takes at most 10 minutes of life
            assertion = jwt.encode({"iat": now - 60, "exp": now + 540, "iss": str(app.app_id)}, key, "RS256")
        except OSError as exc:
            raise GitHubApiError(
                "token", None, f"cannot read {app.private_key_file}: {exc.strerror}"
            ) from exc
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise GitHubApiError(
                "token", None, f"{app.private_key_file} is not an RSA private key: {exc}"
            ) from exc
        resp = await self._request("POST", path, bearer=assertion)
        answer = self._convert(self._json(resp, path), _InstallationToken, "access_tokens")
        try:
            expires = datetime.fromisoformat(answer.expires_at.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise GitHubApiError(
                path, resp.status_code, f"unreadable expires_at {answer.expires_at!r}"
            ) from exc
        self.app_tokens_made += 1
        return answer.token, expires

    def token(self) -> str:
        assert self.token_file is not None
        try:
            st = self.token_file.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if self._token is None or self._token[0] != stamp:
                self._token = (stamp, self.token_file.read_text().strip())
        except OSError as exc:
            raise GitHubApiError(
                "token", None, f"cannot read {self.token_file}: {exc.strerror or exc}"
            ) from exc
        if not self._token[1]:
            raise GitHubApiError("token", None, f"{self.token_file} is empty")
        return self._token[1]

    async def _pages(self, path: str, params: dict[str, str] | None = None) -> Any:
        url: str | None = path
        query: dict[str, str] | None = {**(params or {}), "per_page": "100"}
        for _ in range(MAX_PAGES):
            if url is None:
                return
            resp = await self._send("GET", url, params=query)
            yield self._json(resp, path)
            nxt = resp.links.get("next", {}).get("url")
            url, query = (nxt, None) if nxt else (None, None)

    async def _call(self, method: str, path: str, json: Any = None) -> Any:
        resp = await self._send(method, path, json=json)
        return None if resp.status_code == 204 or not resp.content else self._json(resp, path)

    async def _send(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self._request(method, path, json=json, params=params, bearer=await self.bearer())

    async def _request(
        self, method: str, path: str, *, bearer: str, json: Any = None, params: dict[str, str] | None = None
    ) -> httpx.Response:
        if self._client is None:
            raise GitHubApiError(path, None, "the API client is not started")
        endpoint = f"{method} {path.split('?', 1)[0]}"
        try:
            resp = await self._client.request(
                method, path, json=json, params=params, headers={"Authorization": f"Bearer {bearer}"}
            )
        except httpx.TimeoutException as exc:
            raise GitHubApiError(
                endpoint, None, f"no answer within {self.timeout:g}s ({self.base_url})"
            ) from exc
        except httpx.TransportError as exc:
            raise GitHubApiError(endpoint, None, f"cannot reach {self.base_url}: {exc}") from exc
        if resp.status_code >= 400:
            who = "github.token_file" if self.app is None else "the GitHub App: app_id, private_key_file"
            raise _error(endpoint, resp, who)
        return resp

    @staticmethod
    def _json(resp: httpx.Response, path: str) -> Any:
        try:
            return resp.json()
        except ValueError as exc:
            raise GitHubApiError(path, resp.status_code, "the answer is not JSON") from exc

    @staticmethod
    def _convert(data: Any, t: Any, what: str) -> Any:
        try:
            return msgspec.convert(data, t)
        except msgspec.ValidationError as exc:
            raise GitHubApiError(what, None, f"unexpected answer: {exc}") from None


def _error(endpoint: str, resp: httpx.Response, who: str) -> GitHubApiError:
    try:
        message = str(resp.json().get("message", ""))
    except (ValueError, AttributeError):
        message = resp.text[:200]
    h = resp.headers
    if resp.status_code in (403, 429) and (h.get("retry-after") or h.get("x-ratelimit-remaining") == "0"):
        if h.get("retry-after"):
            wait = float(h["retry-after"])
        else:
            wait = max(float(h.get("x-ratelimit-reset", "0")) - time.time(), 0.0)
        return GitHubApiError(endpoint, resp.status_code, f"rate limited for {wait:.0f}s: {message}", wait)
    if resp.status_code == 401:
        return GitHubApiError(endpoint, 401, f"the token was refused ({who}): {message}")
    return GitHubApiError(endpoint, resp.status_code, message or resp.reason_phrase)
