"""The GitHub part's edges: the webhook signature and payloads, the delivery memory, pool
matching, the runner job's script, the [github] inventory section, and the REST client
against a local stand-in for GitHub's API (a real HTTP server)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.errors import ConfigError
from scalerunner.coordinator.github.api import GitHubApi, GitHubApiError
from scalerunner.coordinator.github.service import match_pool, runner_script
from scalerunner.coordinator.github.webhook import (
    Deliveries,
    WebhookError,
    open_db,
    parse_workflow_job,
    sign,
    verify_signature,
)
from scalerunner.coordinator.inventory import GitHubConfig, GitHubPool, loads_inventory
from tests.integration.github_standin import GitHubStandIn

INVENTORY_MD = (Path(__file__).parents[1] / "docs" / "inventory.md").read_text()


# -- signatures and payloads -----------------------------------------------------------------


@given(secret=st.binary(min_size=1, max_size=64), body=st.binary(max_size=512))
def test_a_body_verifies_under_its_secret_only(secret: bytes, body: bytes) -> None:
    header = sign(secret, body)
    assert header == "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    verify_signature(secret, body, header)
    with pytest.raises(WebhookError) as bad:
        verify_signature(secret + b"x", body, header)
    assert bad.value.status == 401
    with pytest.raises(WebhookError):
        verify_signature(secret, body + b" ", header)


@pytest.mark.parametrize("header", [None, "", "sha1=abc", "sha256=", "sha256=zz"])
def test_a_missing_or_malformed_signature_is_401(header: str | None) -> None:
    with pytest.raises(WebhookError) as exc:
        verify_signature(b"s3cret", b"{}", header)
    assert exc.value.status == 401


def github_payload(action: str = "queued", **job: Any) -> dict[str, Any]:
    """Shaped like GitHub's workflow_job delivery (more fields than we read)."""
    return {
        "action": action,
        "workflow_job": {
            "id": 29679449,
            "run_id": 4384263437,
            "workflow_name": "CI",
            "head_branch": "main",
            "run_url": "https://api.github.com/repos/acme/widgets/actions/runs/4384263437",
            "run_attempt": 1,
            "node_id": "CR_kwDOABCD",
            "head_sha": "a" * 40,
            "url": "https://api.github.com/repos/acme/widgets/actions/jobs/29679449",
            "html_url": "https://github.com/acme/widgets/actions/runs/4384263437/job/29679449",
            "status": "queued",
            "conclusion": None,
            "created_at": "2026-12-02T12:00:00Z",
            "started_at": "2026-12-02T12:00:00Z",
            "completed_at": None,
            "name": "build",
            "steps": [],
            "check_run_url": "https://api.github.com/repos/acme/widgets/check-runs/29679449",
            "labels": ["self-hosted", "linux", "x64"],
            "runner_id": None,
            "runner_name": None,
            "runner_group_id": None,
            "runner_group_name": None,
            **job,
        },
        "repository": {"id": 1, "name": "widgets", "full_name": "acme/widgets", "private": True},
        "organization": {"login": "acme"},
        "sender": {"login": "octocat"},
    }


def test_a_github_shaped_delivery_parses_to_the_fields_used() -> None:
    event = parse_workflow_job(json.dumps(github_payload("completed", conclusion="cancelled")).encode())
    assert event.action == "completed" and event.repository.full_name == "acme/widgets"
    assert event.workflow_job.id == 29679449 and event.workflow_job.conclusion == "cancelled"
    assert event.workflow_job.labels == ["self-hosted", "linux", "x64"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "not a workflow_job payload"),
        (json.dumps({**github_payload(), "action": "exploded"}).encode(), "action"),
        (json.dumps({"action": "queued", "repository": {"full_name": "a/b"}}).encode(), "workflow_job"),
        (json.dumps(github_payload(id="seven")).encode(), "workflow_job.id"),
    ],
)
def test_a_payload_that_is_not_a_workflow_job_is_400_naming_the_field(body: bytes, words: str) -> None:
    with pytest.raises(WebhookError) as exc:
        parse_workflow_job(body)
    assert exc.value.status == 400 and words in str(exc.value)


def test_a_delivery_is_remembered_across_a_reopen_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "github.db"
    db = open_db(path)
    deliveries = Deliveries(db, threading.Lock())
    assert deliveries.remember("d-1") is True
    assert deliveries.remember("d-1") is False
    db.close()
    again = Deliveries(open_db(path), threading.Lock())
    assert again.remember("d-1") is False and again.remember("d-2") is True
    assert path.stat().st_mode & 0o077 == 0


# -- pools and the runner's script -----------------------------------------------------------


def pool(name: str, scope: str, labels: tuple[str, ...], **kw: Any) -> GitHubPool:
    return GitHubPool(name=name, scope=scope, labels=labels, **kw)


def test_the_first_pool_whose_scope_and_labels_fit_takes_the_job() -> None:
    pools = (
        pool("gpu", "acme/widgets", ("self-hosted", "gpu")),
        pool("only-tools", "acme", ("self-hosted",), repositories=("tools",)),
        pool("org", "Acme", ("self-hosted", "linux")),
    )
    assert match_pool(pools, "acme/widgets", ["self-hosted", "GPU", "linux"]).name == "gpu"  # type: ignore[union-attr]
    assert match_pool(pools, "acme/widgets", ["Self-Hosted", "Linux"]).name == "org"  # type: ignore[union-attr]
    assert match_pool(pools, "acme/tools", ["self-hosted"]).name == "only-tools"  # type: ignore[union-attr]
    assert match_pool(pools, "acme/widgets", ["self-hosted"]) is None, "lacks the org pool's linux"
    assert match_pool(pools, "other/widgets", ["self-hosted", "linux"]) is None
    assert match_pool(pools, "acme/widgets-2", ["self-hosted", "gpu"]) is None


class _Claims(BaseHTTPRequestHandler):
    config = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == "Bearer tok-1" and self.path == "/claim"
        data = self.config.encode() if ok else b"no"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def claims() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Claims)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("tool", ["curl", "wget"])
def test_the_runner_script_fetches_its_config_and_passes_it_as_one_argument(
    claims: str, tmp_path: Path, tool: str
) -> None:
    _Claims.config = "eyJh bG'ci\"$HOME`id`"  # quotes, a space, $ and backticks stay one literal arg
    printf = subprocess.run(["which", "printf"], capture_output=True, text=True).stdout.strip()
    script = runner_script((printf, "%s\\n", "--jitconfig", "{jitconfig}", "--name={jitconfig}!", ""))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sh", tool):  # a PATH without the other fetch tool
        found = subprocess.run(
            ["sh", "-c", f"command -v {name}"], capture_output=True, text=True
        ).stdout.strip()
        if found.startswith("/"):
            (bin_dir / name).symlink_to(found)
    env = {"PATH": str(bin_dir), "SCALERUNNER_JIT_URL": f"{claims}/claim", "SCALERUNNER_JIT_TOKEN": "tok-1"}
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["--jitconfig", _Claims.config, f"--name={_Claims.config}!", ""]
    env["SCALERUNNER_JIT_TOKEN"] = "wrong"
    refused = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "--jitconfig" not in refused.stdout, "no runner without its config"


# -- the inventory ---------------------------------------------------------------------------


def inventory(tmp_path: Path, github: str) -> str:
    (tmp_path / "token").write_text("ghp_x\n")
    (tmp_path / "secret").write_text("s\n")
    return f'[cluster]\nname = "lab"\n{github}'


GOOD = """
[github]
token_file = "token"
webhook_secret_file = "secret"

[[github.pools]]
name = "linux"
scope = "acme/widgets"
labels = ["self-hosted", "linux"]
"""


def test_a_github_section_loads_with_its_defaults_and_absolute_paths(tmp_path: Path) -> None:
    inv = loads_inventory(inventory(tmp_path, GOOD), tmp_path / "scalerunner.toml")
    g = inv.github
    assert g is not None and g.api_url == "https://api.github.com"
    assert g.token_file == str(tmp_path / "token") and g.webhook_secret_file == str(tmp_path / "secret")
    assert (g.reconcile_interval, g.idle_timeout) == (60.0, 300.0)
    (p,) = g.pools
    assert p.command == ("./run.sh", "--jitconfig", "{jitconfig}") and p.runner_group_id == 1
    assert loads_inventory(inventory(tmp_path, ""), tmp_path / "x.toml").github is None


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (('token_file = "token"', 'token_file = "nope"'), "github.token_file", "no such file"),
        (('scope = "acme/widgets"', 'scope = "acme/wid/gets"'), "github.pools[0].scope", "neither"),
        (('labels = ["self-hosted", "linux"]', "labels = []"), "github.pools[0].labels", ""),
        (
            ('name = "linux"', 'name = "linux"\ncommand = ["./run.sh"]'),
            "github.pools[0].command",
            "{jitconfig}",
        ),
        (
            ('name = "linux"', 'name = "linux"\nrepositories = ["x"]'),
            "github.pools[0].repositories",
            "organisation",
        ),
        (('name = "linux"', 'name = "linux"\nimage = "Not An Image"'), "github.pools[0].image", "OCI"),
        (("[github]", '[github]\napi_url = "ftp://x"'), "github.api_url", "http(s) URL"),
        (("[github]", '[github]\nsecret = "inline"'), "github.secret", "unknown key"),
        (('name = "linux"', 'name = "linux"\nmemroy_mb = 1'), "github.pools[0].memroy_mb", "unknown key"),
    ],
)
def test_a_bad_github_section_names_the_key(
    tmp_path: Path, change: tuple[str, str], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        loads_inventory(inventory(tmp_path, GOOD.replace(*change, 1)), tmp_path / "scalerunner.toml")
    assert exc.value.key == key and words in exc.value.detail


def test_two_pools_with_one_name_are_refused(tmp_path: Path) -> None:
    twice = GOOD + GOOD.split("[github]", 1)[1].split("\n\n", 1)[1]
    with pytest.raises(ConfigError) as exc:
        loads_inventory(inventory(tmp_path, twice), tmp_path / "scalerunner.toml")
    assert exc.value.key == "github.pools[1].name"


@pytest.mark.parametrize(
    ("heading", "table"), [("## `[github]`", GitHubConfig), ("### `[[github.pools]]`", GitHubPool)]
)
def test_docs_inventory_md_has_a_row_for_every_github_key(heading: str, table: type[msgspec.Struct]) -> None:
    section = INVENTORY_MD.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    if heading.startswith("## "):
        section = section.split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert documented == {f.encode_name for f in msgspec.structs.fields(table)}


# -- the REST client against a stand-in for GitHub's API -------------------------------------


@pytest.fixture
def standin() -> Iterator[GitHubStandIn]:
    s = GitHubStandIn(b"secret", "tok-a")
    s.start()
    try:
        yield s
    finally:
        s.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def with_api(url: str, token_file: Path, body: Any) -> Any:
    api = GitHubApi(url, token_file, timeout=3)
    await api.start()
    try:
        return await body(api)
    finally:
        await api.stop()


def test_the_client_makes_finds_and_removes_a_jit_runner(standin: GitHubStandIn, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-a\n")

    async def body(api: GitHubApi) -> None:
        jit = await api.generate_jitconfig("acme/widgets", "lab-1-1", 3, ["self-hosted", "x"])
        assert jit.name == "lab-1-1" and jit.encoded and jit.encoded not in repr(jit)
        info = await api.get_runner("acme/widgets", jit.runner_id)
        assert info is not None and info.busy is False
        assert await api.delete_runner("acme/widgets", jit.runner_id) is True
        assert await api.delete_runner("acme/widgets", jit.runner_id) is False, "gone already"
        assert await api.get_runner("acme/widgets", jit.runner_id) is None
        org = await api.generate_jitconfig("acme", "lab-2-1", 1, ["self-hosted"])
        assert org.runner_id != jit.runner_id

    run(with_api(standin.url, token, body))
    paths = [(r.method, r.path.split("?")[0]) for r in standin.requests]
    assert ("POST", "/repos/acme/widgets/actions/runners/generate-jitconfig") in paths
    assert ("POST", "/orgs/acme/actions/runners/generate-jitconfig") in paths
    first = standin.requests[0]
    assert first.body == {
        "name": "lab-1-1",
        "runner_group_id": 3,
        "labels": ["self-hosted", "x"],
        "work_folder": "_work",
    }
    assert first.headers["Accept"] == "application/vnd.github+json"


def test_the_client_lists_queued_jobs_of_queued_and_running_runs(
    standin: GitHubStandIn, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("tok-a")
    standin.add_job(1, "acme/widgets", ["self-hosted"])
    standin.add_job(2, "acme/widgets", ["self-hosted"], status="in_progress")
    standin.add_job(3, "acme/tools", ["linux"])

    async def body(api: GitHubApi) -> tuple[list[Any], list[str]]:
        return await api.queued_jobs("acme/widgets"), await api.org_repositories("acme")

    queued, repos = run(with_api(standin.url, token, body))
    assert [(q.id, q.repo, q.labels) for q in queued] == [(1, "acme/widgets", ("self-hosted",))]
    assert repos == ["acme/tools", "acme/widgets"]


def test_api_failures_name_the_endpoint_status_and_cause(standin: GitHubStandIn, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("wrong")

    async def call(api: GitHubApi) -> None:
        await api.generate_jitconfig("acme/widgets", "n", 1, ["x"])

    with pytest.raises(GitHubApiError) as refused:
        run(with_api(standin.url, token, call))
    assert refused.value.status == 401 and "token was refused" in str(refused.value)
    assert "POST /repos/acme/widgets/actions/runners/generate-jitconfig" in str(refused.value)

    token.write_text("tok-a")  # rotated: the next call reads it again
    standin.fail_with = (
        403,
        {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "9999999999"},
        "API rate limit",
    )
    with pytest.raises(GitHubApiError) as limited:
        run(with_api(standin.url, token, call))
    assert limited.value.retry_after is not None and "rate limited" in str(limited.value)
    standin.fail_with = (429, {"retry-after": "7"}, "secondary rate limit")
    with pytest.raises(GitHubApiError) as secondary:
        run(with_api(standin.url, token, call))
    assert secondary.value.retry_after == 7.0
    run(with_api(standin.url, token, call))  # and then it works

    token.unlink()
    with pytest.raises(GitHubApiError) as no_token:
        run(with_api(standin.url, token, call))
    assert str(token) in str(no_token.value)


def test_an_unreachable_api_is_one_clear_error(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused

        async def call(api: GitHubApi) -> None:
            await api.queued_jobs("acme/widgets")

        with pytest.raises(GitHubApiError) as exc:
            run(with_api(f"http://127.0.0.1:{port}", token, call))
    assert exc.value.status is None and f"cannot reach http://127.0.0.1:{port}" in str(exc.value)


@pytest.mark.parametrize("content", [None, b"", b" \n"])
def test_a_missing_or_empty_webhook_secret_stops_the_start_naming_the_file(
    tmp_path: Path, content: bytes | None
) -> None:
    from scalerunner.coordinator.github import GitHubService

    secret = tmp_path / "secret"
    if content is not None:
        secret.write_bytes(content)
    config = GitHubConfig(
        token_file=str(tmp_path / "token"),
        webhook_secret_file=str(secret),
        pools=(pool("p", "acme/w", ("self-hosted",)),),
    )
    service = GitHubService(config, "lab", None, tmp_path, lambda: "")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as exc:
        run(service.start())
    assert exc.value.path == str(secret)
    assert not (tmp_path / "github.db").exists(), "nothing was opened"


# -- a GitHub App instead of a token file ----------------------------------------------------


@pytest.fixture(scope="module")
def app_key() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def test_a_github_app_trades_its_jwt_for_installation_tokens_and_renews_them(
    standin: GitHubStandIn, tmp_path: Path, app_key: tuple[bytes, bytes]
) -> None:
    from scalerunner.coordinator.github.api import AppCredentials

    private, public = app_key
    (tmp_path / "app.pem").write_bytes(private)
    standin.app = (42, 7, public)
    app = AppCredentials(app_id=42, installation_id=7, private_key_file=tmp_path / "app.pem")

    async def calls(n: int, life: float) -> int:
        standin.token_life = life
        api = GitHubApi(standin.url, None, app=app, timeout=3)
        await api.start()
        try:
            for _ in range(n):
                await api.org_repositories("acme")  # one request each
        finally:
            await api.stop()
        return api.app_tokens_made

    assert run(calls(3, 3600)) == 1, "one installation token serves while it lives"
    assert run(calls(2, 120)) == 2, "one that expires within the margin is renewed"
    used = {r.headers.get("Authorization") for r in standin.requests if r.path.startswith("/orgs/acme/repos")}
    assert used and used <= {f"Bearer {t}" for t in standin.issued}

    standin.app = (43, 7, public)  # GitHub knows another App id: the JWT is refused
    with pytest.raises(GitHubApiError) as refused:
        run(calls(1, 3600))
    assert refused.value.status == 401 and "GitHub App" in str(refused.value)
    (tmp_path / "app.pem").write_text("not a key")
    with pytest.raises(GitHubApiError) as bad_key:
        run(calls(1, 3600))
    assert "app.pem is not an RSA private key" in str(bad_key.value)


APP = """
[github]
app_id = 42
installation_id = 7
private_key_file = "app.pem"
webhook_secret_file = "secret"

[[github.pools]]
name = "linux"
scope = "acme"
labels = ["self-hosted"]
"""


def test_a_github_app_in_the_inventory_needs_all_three_keys_and_no_token_file(tmp_path: Path) -> None:
    (tmp_path / "app.pem").write_text("pem")
    path = tmp_path / "scalerunner.toml"
    inv = loads_inventory(inventory(tmp_path, APP), path)
    assert inv.github is not None and inv.github.private_key_file == str(tmp_path / "app.pem")
    assert inv.github.token_file is None
    for text, key, words in (
        (APP.replace("installation_id = 7\n", ""), "github.app_id", "also needs installation_id"),
        (APP.replace("[github]\n", '[github]\ntoken_file = "token"\n'), "github.app_id", "not both"),
        (
            APP.replace('app_id = 42\ninstallation_id = 7\nprivate_key_file = "app.pem"\n', ""),
            "github.token_file",
            "required",
        ),
        (APP.replace('"app.pem"', '"gone.pem"'), "github.private_key_file", "no such file"),
    ):
        with pytest.raises(ConfigError) as exc:
            loads_inventory(inventory(tmp_path, text), path)
        assert exc.value.key == key and words in exc.value.detail, exc.value
