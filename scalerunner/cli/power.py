"""`scalerunner power status|on|off|cycle` and `scalerunner energy` (docs/power.md).

A bulk action prints one line per node (ok, or its error naming node and outlet) and exits 1 if
any node failed; `--json` prints the documented result objects instead.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from . import exits
from .client import Api, token_option, url_option

_STATE_STYLE = {"on": "green", "off": "dim", "searching": "yellow", "fault": "bold red", "unknown": "red"}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The API answers when every node's action has ended: off, min_off and on timeouts, perhaps
# after another action on the same outlet. Generous, so the CLI does not give up first.
ACTION_TIMEOUT = 300.0


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def _when(text: str | None, option: str) -> float | None:
    """``90s``/``15m``/``2h``/``1d`` ago, or a Unix time."""
    if text is None:
        return None
    m = _DURATION.match(text)
    if m:
        return time.time() - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a duration (90s, 15m, 2h, 1d) or a Unix time", param_hint=option
        ) from None


def _watts(w: float | None) -> str:
    return "-" if w is None else f"{w:.1f}"


@click.group()
def power() -> None:
    """Node power through PoE switch ports or BMCs: status, on, off, cycle."""


@power.command("status")
@click.argument("nodes", nargs=-1)
@url_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="print the documented result objects")
def power_status(nodes: tuple[str, ...], url: str | None, token: str | None, as_json: bool) -> None:
    """The outlet of every node (or of NODES): state and watts. Exits 1 if one could not be read."""
    data = Api.resolve(url, token).call("GET", "/api/v1/power", params=[("node", n) for n in nodes])
    if as_json:
        _emit_json(data)
    else:
        table = Table()
        for col in ("node", "outlet", "state", "watts", "detail"):
            table.add_column(col)
        for r in data:
            state = r["state"] if r["ok"] else "error"
            style = _STATE_STYLE.get(state, "bold red")
            detail = r["message"] if r["ok"] else f"{r['cause']}: {r['message']}"
            table.add_row(r["node"], r["outlet"] or "-", f"[{style}]{state}[/]", _watts(r["watts"]), detail)
        Console().print(table)
    if not all(r["ok"] for r in data):
        sys.exit(exits.FAILED)


def _action(verb: str, help_text: str) -> click.Command:
    @power.command(verb, help=help_text)
    @click.argument("nodes", nargs=-1, required=True)
    @click.option("--reason", default="operator request", help="recorded in the nodes' events")
    @url_option
    @token_option
    @click.option("--json", "as_json", is_flag=True, help="print the documented result objects")
    def run(nodes: tuple[str, ...], reason: str, url: str | None, token: str | None, as_json: bool) -> None:
        data = Api.resolve(url, token).call(
            "POST",
            f"/api/v1/power/{verb}",
            json={"nodes": list(nodes), "reason": reason},
            timeout=ACTION_TIMEOUT,
        )
        if as_json:
            _emit_json(data)
        else:
            for r in data:
                if r["ok"]:
                    click.echo(f"{r['node']}: {verb} ok: {r['outlet']} {r['state']} ({_watts(r['watts'])} W)")
                else:
                    click.echo(f"{r['node']}: {verb} FAILED ({r['cause']}): {r['message']}")
        failed = [r["node"] for r in data if not r["ok"]]
        if failed:
            click.echo(
                f"error: {verb} failed on {len(failed)} of {len(data)} nodes: {', '.join(failed)}", err=True
            )
            sys.exit(exits.FAILED)

    return run


_action("on", "Power NODES on (each to delivering power, or its fault); exits 1 if any failed.")
_action("off", "Power NODES off (each until its outlet stops delivering power); exits 1 if any failed.")
_action(
    "cycle",
    "Power-cycle NODES: off, hold the minimum off time, on; all in parallel. Exits 1 if any failed.",
)


@click.command()
@click.option("--node", "nodes", multiple=True, help="only this node (repeat for more)")
@click.option("--job", default=None, help="the energy of this job's attempts, each over its run on its node")
@click.option("--since", default=None, help="window start: 90s, 15m, 2h, 1d ago or a Unix time (default 1h)")
@click.option("--until", default=None, help="window end (default now)")
@url_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="print the documented energy objects")
def energy(
    nodes: tuple[str, ...],
    job: str | None,
    since: str | None,
    until: str | None,
    url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Energy drawn per node (Wh) over a time window, or per job."""
    params: list[tuple[str, Any]] = [("node", n) for n in nodes]
    if job is not None:
        if nodes or since or until:
            raise click.UsageError("--job takes the job's own run as the window: no --node/--since/--until")
        params.append(("job", job))
    for key, value in (("since", _when(since, "--since")), ("until", _when(until, "--until"))):
        if value is not None:
            params.append((key, value))
    data = Api.resolve(url, token).call("GET", "/api/v1/energy", params=params)
    if as_json:
        _emit_json(data)
        return
    table = Table()
    for col in ("node", *(["job", "attempt"] if job else []), "from", "to", "Wh", "mean W", "covered"):
        table.add_column(col)
    total = 0.0
    for r in data:
        span = r["until"] - r["since"]
        covered = f"{100 * r['covered_s'] / span:.0f} %" if span > 0 else "-"
        total += r["wh"]
        table.add_row(
            r["node"],
            *([r["job"], str(r["attempt"])] if job else []),
            time.strftime("%F %T", time.localtime(r["since"])),
            time.strftime("%F %T", time.localtime(r["until"])),
            f"{r['wh']:.3f}",
            _watts(r["mean_w"]),
            covered,
        )
    console = Console()
    console.print(table)
    console.print(f"total {total:.3f} Wh")
