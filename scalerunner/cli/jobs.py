"""`scalerunner jobs ...`: submit, ls, show, logs [-f], cancel, wait, artifacts (docs/jobs.md).

``submit`` prints the job id alone on stdout (``JOB=$(scalerunner jobs submit -- make)``);
``wait`` exits with the job's own exit code. A spec file is validated here first, so its errors
name the file and the key (exit 2).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx
import msgspec
from rich.console import Console
from rich.table import Table

from ..coordinator.jobs.spec import JobSpecError, load_spec, spec_from_mapping
from . import exits
from .client import Api, fail, token_option, url_option

TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")
_STATE_STYLE = {
    "queued": "yellow",
    "starting": "cyan",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
    "timed_out": "red",
}


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def _when(ts: float | None) -> str:
    return time.strftime("%F %T", time.localtime(ts)) if ts else "-"


@click.group()
def jobs() -> None:
    """Submit jobs, follow their logs, wait for them, fetch their artifacts."""


@jobs.command("submit", context_settings={"allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-f", "--file", "spec_file", type=click.Path(dir_okay=False, path_type=Path), help="a job spec")
@click.option("--name", default=None)
@click.option("--image", default=None, help="OCI image reference")
@click.option("--arch", type=click.Choice(["amd64", "arm64", "riscv64"]), default=None)
@click.option("--label", "labels", multiple=True, help="a label the node must have (repeatable)")
@click.option("--cpus", type=float, default=None)
@click.option("--memory", default=None, help="MB, or e.g. 512M, 2G")
@click.option("--timeout", "timeout", default=None, help="seconds, or e.g. 90s, 30m, 2h")
@click.option("--env", "env", multiple=True, help="NAME=VALUE (repeatable)")
@click.option("--artifact", "artifacts", multiple=True, help="a path or glob to collect (repeatable)")
@click.option("--retries", type=int, default=None)
@click.option("--priority", type=int, default=None)
@click.option("--project", default=None)
@click.option(
    "--network/--no-network",
    "network",
    default=None,
    help="the job may use the network (default: a spec file's setting, else none)",
)
@url_option
@token_option
def submit(
    args: tuple[str, ...], spec_file: Path | None, url: str | None, token: str | None, **opts: Any
) -> None:
    """Queue a job: `submit FILE`, or `submit [OPTIONS] -- CMD ARGS...`; prints its id."""
    if args and args[0] == "--":
        args = args[1:]
    source = "command line"
    data: dict[str, Any] = {}
    if spec_file is None and len(args) == 1 and Path(args[0]).suffix in (".yaml", ".yml", ".json"):
        spec_file, args = Path(args[0]), ()
    if spec_file is not None:
        if args:
            fail("give a spec file or a command after --, not both", exits.USAGE)
        source = str(spec_file)
        try:
            data = msgspec.to_builtins(load_spec(spec_file))
        except JobSpecError as exc:
            fail(str(exc), exits.USAGE)
        data = {k: v for k, v in data.items() if v is not None}
    elif args:
        data["command"] = list(args)
    else:
        fail("nothing to run: give a spec file, or a command after --", exits.USAGE)
    keys = ("name", "image", "arch", "cpus", "memory", "timeout", "retries", "priority", "project", "network")
    for key in keys:
        if opts[key] is not None:
            data[key] = opts[key]
    if opts["labels"]:
        data["labels"] = list(opts["labels"])
    if opts["artifacts"]:
        data["artifacts"] = list(opts["artifacts"])
    if opts["env"]:
        env = dict(data.get("env") or {})
        for item in opts["env"]:
            name, eq, value = item.partition("=")
            if not eq:
                fail(f"--env {item!r}: write NAME=VALUE", exits.USAGE)
            env[name] = value
        data["env"] = env
    try:
        spec = spec_from_mapping(data, source)
    except JobSpecError as exc:
        fail(str(exc), exits.USAGE)
    job = Api.resolve(url, token).call("POST", "/api/v1/jobs", json=msgspec.to_builtins(spec))
    click.echo(f"queued {job['name']!r} as {job['id']}", err=True)
    click.echo(job["id"])


@jobs.command("ls")
@click.option(
    "--state", "states", multiple=True, type=click.Choice(["queued", "starting", "running", *TERMINAL])
)
@click.option("--limit", type=click.IntRange(1, 10000), default=50)
@click.option("--json", "as_json", is_flag=True, help="print the documented job objects")
@url_option
@token_option
def jobs_ls(states: tuple[str, ...], limit: int, as_json: bool, url: str | None, token: str | None) -> None:
    """The latest jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if states:
        params["state"] = list(states)
    data = Api.resolve(url, token).call("GET", "/api/v1/jobs", params=params)
    if as_json:
        _emit_json(data)
        return
    Console().print(_table(data))


def _table(data: list[dict[str, Any]]) -> Table:
    table = Table()
    for col in ("job", "name", "state", "node", "attempts", "exit", "project", "submitted"):
        table.add_column(col)
    for j in data:
        st = j["state"]
        table.add_row(
            j["id"],
            j["name"],
            f"[{_STATE_STYLE.get(st, 'white')}]{st}[/]",
            j.get("node") or "-",
            str(len(j.get("attempts", []))),
            "-" if j.get("exit_code") is None else str(j["exit_code"]),
            j["project"],
            _when(j["submitted_at"]),
        )
    return table


@jobs.command("show")
@click.argument("job")
@click.option("--json", "as_json", is_flag=True)
@url_option
@token_option
def jobs_show(job: str, as_json: bool, url: str | None, token: str | None) -> None:
    """Everything known about JOB: its state, attempts and history."""
    data = Api.resolve(url, token).call("GET", f"/api/v1/jobs/{job}")
    if as_json:
        _emit_json(data)
        return
    console = Console()
    console.print(_table([data]))
    console.print(f"reason: {data['reason']}")
    for a in data["attempts"]:
        code = "" if a.get("exit_code") is None else f", exit {a['exit_code']}"
        console.print(f"attempt {a['number']} on {a['node']}: {a['state']}{code} {a['reason']}".rstrip())
    for h in data["history"]:
        console.print(f"  {_when(h['at'])} {h['state']}: {h['reason']}")


@jobs.command("logs")
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the job is over")
@click.option("--attempt", type=int, default=None, help="only this attempt")
@url_option
@token_option
def jobs_logs(job: str, follow: bool, attempt: int | None, url: str | None, token: str | None) -> None:
    """JOB's output, whole and in order: stdout to stdout, stderr (and gaps) to stderr."""
    api = Api.resolve(url, token)
    cursor = (0, -1)
    shown_attempt = 0
    while True:
        params = {"attempt": cursor[0], "seq": cursor[1], "wait": 10 if follow else 0}
        data = api.call("GET", f"/api/v1/jobs/{job}/log", params=params)
        for c in data["chunks"]:
            if attempt is not None and c["attempt"] != attempt:
                continue
            if c["attempt"] != shown_attempt and (shown_attempt or c["attempt"] > 1):
                click.echo(f"--- attempt {c['attempt']} ---", err=True)
            shown_attempt = c["attempt"]
            out = sys.stdout if c["stream"] == "stdout" else sys.stderr
            out.write(c["data"])
            out.flush()
        cursor = (data["next_attempt"], data["next_seq"])
        if data["done"] or (not follow and not data["chunks"]):
            return


@jobs.command("cancel")
@click.argument("job")
@click.option("--reason", default="operator request")
@url_option
@token_option
def jobs_cancel(job: str, reason: str, url: str | None, token: str | None) -> None:
    """Cancel JOB in whatever state it is (a running attempt is stopped on its node)."""
    data = Api.resolve(url, token).call("POST", f"/api/v1/jobs/{job}/cancel", json={"reason": reason})
    click.echo(f"{job}: {data['state']} ({data['reason']})", err=True)


def exit_code_of(job: dict[str, Any]) -> int:
    """The code `jobs wait` exits with: the job's own; 1 if it ended without one."""
    if job["state"] == "succeeded":
        return 0
    code = job.get("exit_code")
    if code:
        return int(code)
    return 124 if job["state"] == "timed_out" else exits.FAILED


@jobs.command("wait")
@click.argument("job")
@click.option("--timeout", type=float, default=None, help="give up after this many seconds (exit 3)")
@url_option
@token_option
def jobs_wait(job: str, timeout: float | None, url: str | None, token: str | None) -> None:
    """Wait until JOB is over; exit with its exit code."""
    api = Api.resolve(url, token)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.2
    while True:
        data = api.call("GET", f"/api/v1/jobs/{job}")
        if data["state"] in TERMINAL:
            click.echo(f"{job}: {data['state']} ({data['reason']})", err=True)
            sys.exit(exit_code_of(data))
        if deadline is not None and time.monotonic() >= deadline:
            fail(f"job {job} is still {data['state']} after {timeout:g} s", exits.UNREACHABLE)
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


@jobs.command("artifacts")
@click.argument("job")
@click.option("--get", "name", default=None, help="download this artifact")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--attempt", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
@url_option
@token_option
def jobs_artifacts(
    job: str,
    name: str | None,
    output: Path | None,
    attempt: int | None,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """List JOB's artifacts, or download one with --get NAME (to -o PATH, or stdout)."""
    api = Api.resolve(url, token)
    if name is None:
        data = api.call("GET", f"/api/v1/jobs/{job}/artifacts")
        if as_json:
            _emit_json(data)
            return
        table = Table()
        for col in ("attempt", "name", "size", "sha256"):
            table.add_column(col)
        for a in data:
            table.add_row(str(a["attempt"]), a["name"], str(a["size"]), a["sha256"][:16])
        Console().print(table)
        return
    api.call("GET", f"/api/v1/jobs/{job}")  # a clear error for an unknown job
    params = {"attempt": attempt} if attempt is not None else {}
    try:
        with httpx.stream(
            "GET",
            f"{api.url}/api/v1/jobs/{job}/artifacts/{name}",
            params=params,
            headers={"Authorization": f"Bearer {api.token}"},
            timeout=60,
        ) as resp:
            if resp.status_code >= 400:
                resp.read()
                fail(resp.json().get("error", resp.text), exits.FAILED)
            sink = output.open("wb") if output is not None else sys.stdout.buffer
            try:
                for piece in resp.iter_bytes():
                    sink.write(piece)
            finally:
                if output is not None:
                    sink.close()
    except httpx.HTTPError as exc:
        fail(f"coordinator at {api.url} could not be reached: {exc}", exits.UNREACHABLE)
