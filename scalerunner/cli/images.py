"""`scalerunner images ...`: the boot-image registry (docs/images.md).

``add`` hashes the files here, asks the coordinator which blobs it lacks, uploads only those
(streaming, with a progress bar and bytes/s for large files, on stderr), then creates the
version and prints ``NAME VERSION`` alone on stdout. ``ls``/``show`` print tables or ``--json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..coordinator.pxe.rules import ARCHES, file_name_problem, name_problem
from ..imagebuild.cli import build as image_build
from . import exits
from .client import Api, fail, token_option, url_option

__all__ = ["images"]

CHUNK = 1 << 20
LARGE = 4 << 20  # bytes: files from this size get a progress bar


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def _when(ts: float) -> str:
    return time.strftime("%F %T", time.localtime(ts))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


@click.group()
def images() -> None:
    """The boot images nodes network-boot: add, list, promote to a group, roll back, remove."""


images.add_command(image_build)  # scalerunner/imagebuild/cli.py


def collect(
    kernel: Path, initrds: tuple[Path, ...], dtbs: tuple[Path, ...], firmware: tuple[Path, ...]
) -> list[tuple[Path, str]]:
    """The files of an image as (path, role); a firmware directory gives its regular files
    (top level, sorted). A file name a node could not ask for is a usage error naming it."""
    files: list[tuple[Path, str]] = [(kernel, "kernel")]
    files += [(p, "initrd") for p in initrds] + [(p, "dtb") for p in dtbs]
    for p in firmware:
        if p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_file() and not c.name.startswith("."))
            if not found:
                fail(f"firmware directory {p} has no files", exits.USAGE)
            files += [(c, "firmware") for c in found]
        else:
            files.append((p, "firmware"))
    seen: dict[str, Path] = {}
    for path, _ in files:
        if not path.is_file():
            fail(f"{path}: not a file", exits.USAGE)
        problem = file_name_problem(path.name)
        if problem:
            fail(f"{path}: {problem}", exits.USAGE)
        if path.name in seen:
            fail(f"{path} and {seen[path.name]} have the same name; nodes ask by name", exits.USAGE)
        seen[path.name] = path
    return files


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def sha256_file(path: Path, progress: Progress, task: TaskID) -> str:
    h = hashlib.sha256()
    for piece in _read(path, progress, task):
        h.update(piece)
    return h.hexdigest()


def _read(path: Path, progress: Progress, task: TaskID) -> Iterator[bytes]:
    with path.open("rb") as f:
        while piece := f.read(CHUNK):
            progress.advance(task, len(piece))
            yield piece


@images.command("add")
@click.argument("name")
@click.argument("version")
@click.option("--arch", required=True, type=click.Choice(ARCHES))
@click.option("--kernel", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--initrd", "initrds", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--dtb", "dtbs", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--firmware",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="a file, or a directory whose files all go in (the Pi 4's boot firmware)",
)
@click.option(
    "--cmdline", default="", help="kernel command line template; {node}, {mac}, {url} are filled in"
)
@url_option
@token_option
def images_add(
    name: str,
    version: str,
    arch: str,
    kernel: Path,
    initrds: tuple[Path, ...],
    dtbs: tuple[Path, ...],
    firmware: tuple[Path, ...],
    cmdline: str,
    url: str | None,
    token: str | None,
) -> None:
    """Add image NAME VERSION for an arch; prints `NAME VERSION`."""
    for what, value in (("image name", name), ("version", version)):
        problem = name_problem(what, value)
        if problem:
            fail(problem, exits.USAGE)
    files = collect(kernel, initrds, dtbs, firmware)
    api = Api.resolve(url, token)
    large = {p for p, _ in files if p.stat().st_size >= LARGE}
    digests: dict[Path, str] = {}
    with _progress(enabled=bool(large)) as progress:
        for path, _ in files:
            task = progress.add_task(f"hash   {path.name}", total=path.stat().st_size, visible=path in large)
            digests[path] = sha256_file(path, progress, task)
        wanted = {"digests": list(dict.fromkeys(digests.values()))}
        missing = set(api.call("POST", "/api/v1/images/blobs/missing", json=wanted)["missing"])
        for path, _ in files:
            digest = digests[path]
            if digest not in missing:
                continue
            missing.discard(digest)  # the same content under two names goes up once
            task = progress.add_task(f"upload {path.name}", total=path.stat().st_size, visible=path in large)
            api.call(
                "PUT", f"/api/v1/images/blobs/{digest}", content=_read(path, progress, task), timeout=300
            )
    body = {
        "name": name,
        "version": version,
        "arch": arch,
        "cmdline": cmdline,
        "files": [{"name": p.name, "role": role, "sha256": digests[p]} for p, role in files],
    }
    api.call("POST", "/api/v1/images", json=body)
    click.echo(f"{name} {version}")


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table()
    for col in ("NAME", "VERSION", "ARCH", "SIZE", "FILES", "CREATED", "PROMOTED TO", "OVERRIDE FOR"):
        table.add_column(col)
    for i in rows:
        table.add_row(
            i["name"],
            i["version"],
            i["arch"],
            _size(i["size"]),
            str(len(i["files"])),
            _when(i["created_at"]),
            ", ".join(i["promoted_to"]) or "-",
            ", ".join(i["overridden_for"]) or "-",
        )
    return table


@images.command("ls")
@click.option("--json", "as_json", is_flag=True, help="print the documented JSON (a list of images)")
@url_option
@token_option
def images_ls(as_json: bool, url: str | None, token: str | None) -> None:
    """Every image version and arch, with where it is promoted."""
    data = Api.resolve(url, token).call("GET", "/api/v1/images")
    if as_json:
        _emit_json(data)
        return
    Console().print(_table(data))


@images.command("show")
@click.argument("name")
@click.argument("version", required=False)
@click.option("--json", "as_json", is_flag=True)
@url_option
@token_option
def images_show(name: str, version: str | None, as_json: bool, url: str | None, token: str | None) -> None:
    """One image: its versions, promotion history and overrides; or one version's files."""
    api = Api.resolve(url, token)
    console = Console()
    if version is not None:
        builds = api.call("GET", f"/api/v1/images/{name}/{version}")
        if as_json:
            _emit_json(builds)
            return
        console.print(_table(builds))
        for b in builds:
            files = Table(title=f"{name} {version} ({b['arch']})  cmdline: {b['cmdline'] or '-'}")
            for col in ("FILE", "ROLE", "SIZE", "SHA256"):
                files.add_column(col)
            for f in b["files"]:
                files.add_row(f["name"], f["role"], _size(f["size"]), f["sha256"])
            console.print(files)
        return
    data = api.call("GET", f"/api/v1/images/{name}")
    if as_json:
        _emit_json(data)
        return
    console.print(_table(data["versions"]))
    if data["history"]:
        history = Table(title="promotions")
        for col in ("GROUP", "ARCH", "#", "VERSION", "AT", "ROLLED BACK"):
            history.add_column(col)
        for p in data["history"]:
            back = _when(p["rolled_back_at"]) if p["rolled_back_at"] else "-"
            history.add_row(p["group"], p["arch"], str(p["seq"]), p["version"], _when(p["at"]), back)
        console.print(history)
    for o in data["overrides"]:
        console.print(f"override: node {o['node']} boots {o['image']} {o['version']}")


@images.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--group", default=None, help="the node group (the inventory's boot_group of its nodes)")
@click.option("--node", default=None, help="instead: this node boots the version (an override)")
@click.option("--arch", type=click.Choice(ARCHES), default=None, help="only this arch's build")
@url_option
@token_option
def images_promote(
    name: str,
    version: str,
    group: str | None,
    node: str | None,
    arch: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """Make VERSION what a group (--group) or one node (--node) boots next."""
    if (group is None) == (node is None):
        fail("give exactly one of --group and --node", exits.USAGE)
    if node is not None and arch is not None:
        fail("--arch goes with --group; a node's own arch picks the build", exits.USAGE)
    body = {"group": group, "node": node, "arch": arch}
    result = Api.resolve(url, token).call("POST", f"/api/v1/images/{name}/{version}/promote", json=body)
    for p in result["promotions"]:
        click.echo(f"{p['group']} ({p['arch']}) boots {p['image']} {p['version']}", err=True)
    if result["override"]:
        o = result["override"]
        click.echo(f"node {o['node']} boots {o['image']} {o['version']} (override)", err=True)


@images.command("rollback")
@click.argument("name")
@click.option("--group", required=True)
@click.option("--arch", type=click.Choice(ARCHES), default=None)
@url_option
@token_option
def images_rollback(name: str, group: str, arch: str | None, url: str | None, token: str | None) -> None:
    """Undo NAME's latest promotion in a group: the version before boots again."""
    back = Api.resolve(url, token).call(
        "POST", f"/api/v1/images/{name}/rollback", json={"group": group, "arch": arch}
    )
    for p in back:
        click.echo(f"{p['group']} ({p['arch']}) boots {p['image']} {p['version']}", err=True)


@images.command("rm")
@click.argument("name")
@click.argument("version")
@click.option("--arch", type=click.Choice(ARCHES), default=None, help="only this arch's build")
@url_option
@token_option
def images_rm(name: str, version: str, arch: str | None, url: str | None, token: str | None) -> None:
    """Remove a version (refused while promoted or some node's override)."""
    params = {"arch": arch} if arch else {}
    result = Api.resolve(url, token).call("DELETE", f"/api/v1/images/{name}/{version}", params=params)
    arches = ", ".join(r["arch"] for r in result["removed"])
    click.echo(f"removed {name} {version} ({arches}); {result['blobs_deleted']} blobs deleted", err=True)


@images.command("clear-override")
@click.argument("node")
@url_option
@token_option
def images_clear_override(node: str, url: str | None, token: str | None) -> None:
    """NODE boots its group's promotion again."""
    result = Api.resolve(url, token).call("DELETE", f"/api/v1/image-overrides/{node}")
    click.echo(f"node {node}: " + ("override cleared" if result["cleared"] else "had no override"), err=True)
