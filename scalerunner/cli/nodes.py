"""`scalerunner nodes ...`, `drain`, `undrain`, `identify`, `reboot`, `events`."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .client import Api, token_option, url_option

HEALTH = ["good", "unknown", "bad", "maintenance", "retired"]
_STATE_STYLE = {
    "idle": "green",
    "busy": "yellow",
    "draining": "magenta",
    "offline": "red",
    "failed": "bold red",
}
_HEALTH_STYLE = {"good": "green", "unknown": "yellow", "bad": "red", "maintenance": "blue", "retired": "dim"}


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def _nodes_table(nodes: list[dict[str, Any]]) -> Table:
    table = Table()
    for col in ("node", "state", "health", "arch", "load", "temp °C", "labels", "switch port"):
        table.add_column(col)
    for n in nodes:
        tele = n.get("telemetry") or {}
        st = n["state"]
        he = n["health"]
        temp = tele.get("temp_c")
        table.add_row(
            n["name"],
            f"[{_STATE_STYLE.get(st, 'white')}]{st}[/]",
            f"[{_HEALTH_STYLE.get(he, 'white')}]{he}[/]",
            n["arch"],
            f"{tele['load1']:.2f}" if tele else "-",
            f"{temp:.1f}" if temp is not None else "-",
            ",".join(n.get("labels", [])),
            f"{n.get('switch') or '-'}:{n.get('port') or '-'}",
        )
    return table


@click.group()
def nodes() -> None:
    """List and inspect nodes, set their health."""


@nodes.command("ls")
@url_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="print the documented node objects")
def nodes_ls(url: str | None, token: str | None, as_json: bool) -> None:
    """List every node with its state and health."""
    data = Api.resolve(url, token).call("GET", "/api/v1/nodes")
    if as_json:
        _emit_json(data)
    else:
        Console().print(_nodes_table(data))


@nodes.command("show")
@click.argument("node")
@url_option
@token_option
@click.option("--json", "as_json", is_flag=True)
def nodes_show(node: str, url: str | None, token: str | None, as_json: bool) -> None:
    """Everything known about NODE."""
    data = Api.resolve(url, token).call("GET", f"/api/v1/nodes/{node}")
    if as_json:
        _emit_json(data)
        return
    console = Console()
    console.print(_nodes_table([data]))
    console.print(
        f"health reason: {data.get('health_reason') or '-'}; mac {data['mac']}; "
        f"in state {data['state']} since {time.strftime('%F %T', time.localtime(data['state_since']))}"
    )


@nodes.command("health")
@click.argument("node")
@click.argument("health", type=click.Choice(HEALTH))
@click.option("--reason", required=True, help="why (recorded in the node's events)")
@url_option
@token_option
def nodes_health(node: str, health: str, reason: str, url: str | None, token: str | None) -> None:
    """Set NODE's health (operators set maintenance, retired, or good after a repair)."""
    data = Api.resolve(url, token).call(
        "PUT", f"/api/v1/nodes/{node}/health", json={"health": health, "reason": reason}
    )
    click.echo(f"{data['name']}: health {data['health']}", err=True)


def _command(verb: str, help_text: str, with_reason: bool) -> click.Command:
    @click.command(verb, help=help_text)
    @click.argument("node")
    @url_option
    @token_option
    def run(node: str, url: str | None, token: str | None, **kw: Any) -> None:
        body = {"reason": kw["reason"]} if with_reason and kw.get("reason") else None
        data = Api.resolve(url, token).call("POST", f"/api/v1/nodes/{node}/{verb}", json=body)
        click.echo(f"{node}: {verb} ok {data.get('detail', '')}".rstrip(), err=True)

    if with_reason:
        run = click.option("--reason", default=None, help="recorded in the node's events")(run)
    return run


drain = _command("drain", "Stop giving NODE new work; running jobs finish.", True)
undrain = _command("undrain", "Let NODE take work again.", True)
identify = _command("identify", "Blink NODE's LED indicator so it can be found in the rack.", False)
reboot = _command(
    "reboot", "Ask NODE's agent to reboot the node (its reboot_command); exits 1 if it has none.", True
)


@click.command()
@click.option("--node", default=None, help="only this node's events")
@click.option("--after", type=int, default=None, help="only events after this id")
@click.option("--limit", type=click.IntRange(1, 1000), default=100)
@url_option
@token_option
@click.option("--json", "as_json", is_flag=True)
def events(
    node: str | None, after: int | None, limit: int, url: str | None, token: str | None, as_json: bool
) -> None:
    """Lifecycle and health events, oldest first."""
    params: dict[str, Any] = {"limit": limit}
    if node:
        params["node"] = node
    if after is not None:
        params["after"] = after
    data = Api.resolve(url, token).call("GET", "/api/v1/events", params=params)
    if as_json:
        _emit_json(data)
        return
    table = Table()
    for col in ("id", "time", "node", "axis", "change", "reason"):
        table.add_column(col)
    for e in data:
        table.add_row(
            str(e["id"]),
            time.strftime("%F %T", time.localtime(e["at"])),
            e["node"],
            e["axis"],
            f"{e['old']} → {e['new']}",
            e["reason"],
        )
    Console().print(table)
