"""``scalerunner images build``: the node image, built here from Debian packages (docs/images.md).

Stages and the running tool's latest line are drawn on stderr with rich; stdout gets the output
directory alone (or, with ``--add``, what ``images add`` prints). Exit 0 built or up to date,
1 the build failed, 2 a usage or configuration error (an arch this machine cannot build).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from ..cli.client import token_option, url_option
from ..cli.exits import FAILED, USAGE
from .builder import INITRD_FILE, BuildResult, build_image
from .spec import ARCHES, DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR, DEFAULT_SUITE, BuildError

__all__ = ["RichReporter", "build"]

DEFAULT_OUTPUT = "node-image/{arch}"


class RichReporter:
    """Each stage a line with a spinner and its time; under it, the tool's latest output line."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[detail]}"),
            console=console,
        )
        self.task: TaskID | None = None
        self.width = max(20, console.width - 60)

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish(ok=kind is None)
        self.progress.stop()

    def _finish(self, ok: bool) -> None:
        if self.task is not None:
            if ok:
                self.progress.update(self.task, total=1, completed=1, detail="")
            else:
                self.progress.stop_task(self.task)
                self.progress.update(self.task, detail="[red]failed")

    def stage(self, name: str) -> None:
        self._finish(ok=True)
        self.task = self.progress.add_task(name, total=None, detail="")

    def line(self, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, detail=text[: self.width])


@click.command("build")
@click.option(
    "--arch",
    required=True,
    type=click.Choice(sorted(ARCHES)),
    help="The nodes' architecture; another than this machine's needs qemu-user-static and binfmt.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Directory for vmlinuz, initrd.img and manifest.json  [default: {DEFAULT_OUTPUT}]",
)
@click.option("--suite", default=DEFAULT_SUITE, show_default=True, help="Debian suite.")
@click.option("--mirror", default=DEFAULT_MIRROR, show_default=True, help="Debian mirror.")
@click.option(
    "--security-mirror",
    default=DEFAULT_SECURITY_MIRROR,
    show_default=True,
    help="Mirror of the suite's security updates; '' for none (a local mirror).",
)
@click.option("--kernel-package", default="", help="Kernel package instead of the arch's default.")
@click.option("--include", "extra", multiple=True, help="Another Debian package in the image (repeatable).")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the layers and downloaded packages are kept  [default: ~/.cache/scalerunner/imagebuild]",
)
@click.option("--force", is_flag=True, help="Build both layers again, even when the cache matches.")
@click.option(
    "--add",
    "add",
    nargs=2,
    metavar="NAME VERSION",
    default=None,
    help="Then add the image to the coordinator's registry as NAME VERSION (as `images add` does).",
)
@url_option
@token_option
@click.pass_context
def build(
    ctx: click.Context,
    arch: str,
    output: Path | None,
    suite: str,
    mirror: str,
    security_mirror: str,
    kernel_package: str,
    extra: tuple[str, ...],
    cache_dir: Path | None,
    force: bool,
    add: tuple[str, str] | None,
    url: str | None,
    token: str | None,
) -> None:
    """Build a RAM-bootable node image: Debian's kernel and an initramfs holding a Debian root
    with python3 and the node agent, started at boot (docs/images.md)."""
    out_dir = output or Path(DEFAULT_OUTPUT.format(arch=arch))
    console = Console(stderr=True)
    started = time.monotonic()
    try:
        with RichReporter(console) as reporter:
            result = build_image(
                arch,
                out_dir,
                suite=suite,
                mirror=mirror,
                security_mirror=security_mirror or None,
                kernel_package=kernel_package,
                extra_packages=extra,
                cache_dir=cache_dir,
                force=force,
                reporter=reporter,
            )
    except BuildError as exc:
        console.print(f"[red]scalerunner images build: {exc}", highlight=False)
        sys.exit(USAGE if exc.stage in ("arch", "root") else FAILED)  # this machine cannot build it
    m = result.manifest
    initrd = m.file(INITRD_FILE)
    verb = "up to date" if result.reused else f"built in {time.monotonic() - started:.0f} s"
    console.print(
        f"{out_dir}: {verb}; {m.suite} {m.arch}, kernel {m.kernel.release}, python {m.python},"
        f" agent {m.agent_version}, initrd {initrd.size / 1e6:.1f} MB",
        highlight=False,
    )
    if add is not None:
        _add(ctx, result, add, url, token)
    else:
        click.echo(str(out_dir))


def _add(
    ctx: click.Context, result: BuildResult, add: tuple[str, str], url: str | None, token: str | None
) -> None:
    """Upload through ``images add`` (which prints ``NAME VERSION`` and exits as documented)."""
    from ..cli.images import images_add  # here: cli.images registers this command

    name, version = add
    ctx.invoke(
        images_add,
        name=name,
        version=version,
        arch=result.manifest.arch,
        kernel=result.kernel,
        initrds=(result.initrd,),
        dtbs=(),
        firmware=(),
        cmdline=result.manifest.cmdline,
        url=url,
        token=token,
    )
