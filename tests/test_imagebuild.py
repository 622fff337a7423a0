"""The node image builder's pure parts: which arches build here, the mmdebstrap and pip command
lines, cache keys, the agent's dependency list against what the agent really imports, the boot
scripts' syntax, and the initrd's layout (tests/integration/test_image_build.py builds and boots it)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import canonicalize_name

from scalerunner.imagebuild.builder import _concat, _console_scripts, _node_files, pinned_requirements
from scalerunner.imagebuild.spec import (
    AGENT_REQUIREMENTS,
    BuildError,
    BuildSpec,
    check_buildable,
    layer_key,
    mmdebstrap_argv,
    pip_deps_argv,
    sources,
)

NODE_DIR = Path(__file__).resolve().parents[1] / "scalerunner" / "imagebuild" / "node"


def test_the_host_arch_builds_and_an_unknown_one_is_refused_naming_the_known_ones() -> None:
    assert check_buildable("amd64", "amd64", []).kernel_package == "linux-image-cloud-amd64"
    with pytest.raises(BuildError) as err:
        check_buildable("sparc", "amd64", [])
    assert err.value.stage == "arch"
    assert "sparc" in str(err.value) and "amd64, arm64" in str(err.value)


def test_a_foreign_arch_needs_its_qemu_user_binfmt_entry() -> None:
    with pytest.raises(BuildError) as err:
        check_buildable("arm64", "amd64", ["status", "register", "python3.11"])
    assert "qemu-aarch64" in str(err.value) and "qemu-user-static" in str(err.value)
    assert check_buildable("arm64", "amd64", ["qemu-aarch64"]).debian == "arm64"


def test_mmdebstrap_gets_the_packages_the_excludes_the_cache_and_every_source() -> None:
    spec = BuildSpec(arch="amd64", extra_packages=("ethtool",))
    argv = mmdebstrap_argv(spec, "/r/root", "/r/debs", 0)
    assert argv[0] == "mmdebstrap" and "--variant=essential" in argv
    include = next(a for a in argv if a.startswith("--include=")).removeprefix("--include=").split(",")
    for pkg in ("python3", "busybox", "kmod", "mount", "linux-image-cloud-amd64", "usr-is-merged", "ethtool"):
        assert pkg in include
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv
    assert "--dpkgopt=path-include=/usr/share/doc/*/copyright" in argv
    assert any("sync-in /r/debs" in a for a in argv) and any("sync-out" in a and "/r/debs" in a for a in argv)
    # suite, target, then the sources, last
    tail = argv[argv.index("bookworm") :]
    assert tail[1] == "/r/root" and tail[2:] == sources(spec)
    assert any("bookworm-security" in s for s in sources(spec))
    local = dataclasses.replace(spec, mirror="http://mirror.lan/debian", security_mirror=None)
    assert sources(local) == [
        "deb http://mirror.lan/debian bookworm main",
        "deb http://mirror.lan/debian bookworm-updates main",
    ]
    assert "linux-image-amd64" in ",".join(
        mmdebstrap_argv(dataclasses.replace(spec, kernel_package="linux-image-amd64"), "r", "d", 0)
    )


def test_a_change_to_the_builders_own_package_list_or_hooks_changes_the_base_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scalerunner.imagebuild import spec as spec_module

    spec = BuildSpec(arch="amd64")
    before = layer_key("base", spec)
    monkeypatch.setattr(spec_module, "BASE_PACKAGES", (*spec_module.BASE_PACKAGES, "ethtool"))
    assert layer_key("base", spec) != before
    monkeypatch.undo()
    monkeypatch.setattr(spec_module, "MKTIRFS", "/usr/sbin/other")
    assert layer_key("base", spec) != before


def test_pip_installs_exactly_the_pins_and_only_wheels_for_another_platform() -> None:
    spec = BuildSpec(arch="arm64", requirements=("msgspec==0.23.0", "click==8.1.0"))
    native = pip_deps_argv(
        "py", dataclasses.replace(spec, arch="amd64"), "/t", cross=False, python_version="3.11"
    )
    assert native[-2:] == ["msgspec==0.23.0", "click==8.1.0"] and "--no-deps" in native
    assert not any(a.startswith("--platform") for a in native)
    cross = pip_deps_argv("py", spec, "/t", cross=True, python_version="3.11")
    assert "--only-binary=:all:" in cross and "--platform=manylinux2014_aarch64" in cross
    assert "--abi=cp311" in cross and "--python-version=3.11" in cross


_specs = st.builds(
    BuildSpec,
    arch=st.sampled_from(["amd64", "arm64"]),
    suite=st.sampled_from(["bookworm", "trixie"]),
    mirror=st.sampled_from(["http://deb.debian.org/debian", "http://m.lan/debian"]),
    security_mirror=st.sampled_from([None, "http://deb.debian.org/debian-security"]),
    kernel_package=st.sampled_from(["", "linux-image-amd64"]),
    extra_packages=st.lists(st.sampled_from(["ethtool", "gpiod", "vim-tiny"]), max_size=2).map(tuple),
    requirements=st.lists(st.sampled_from(["a==1", "a==2", "b==1"]), max_size=2).map(tuple),
)


@given(_specs, _specs, st.sampled_from(["x", "y"]))
def test_a_layer_key_changes_exactly_when_an_input_does(a: BuildSpec, b: BuildSpec, extra: str) -> None:
    assert len(layer_key("base", a)) == 64
    assert (layer_key("base", a) == layer_key("base", b)) == (a == b)
    assert layer_key("base", a) != layer_key("agent", a)
    assert layer_key("agent", a, {"source": extra}) == layer_key("agent", a, {"source": extra})
    assert layer_key("agent", a, {"source": "x"}) != layer_key("agent", a, {"source": "y"})


_IMPORTED = r"""
import importlib, importlib.metadata as md, json, pkgutil, sys
before = set(sys.modules)  # the interpreter's start-up (.pth hooks) is no import of the agent
import scalerunner.nodeagent as na
for m in pkgutil.walk_packages(na.__path__, "scalerunner.nodeagent."):
    importlib.import_module(m.name)
import httpx  # imported by the job executor only when a job has artifacts
owners = md.packages_distributions()
dists = {d for name in set(sys.modules) - before for d in owners.get(name.split(".")[0], [])}
print(json.dumps(sorted(dists - {"scalerunner"})))
"""


@pytest.mark.slow
def test_the_image_gets_every_distribution_the_agent_imports_and_no_top_level_one_it_does_not() -> None:
    out = subprocess.run([sys.executable, "-c", _IMPORTED], capture_output=True, text=True, check=True).stdout
    imported = {canonicalize_name(d) for d in json.loads(out)}
    pinned = {canonicalize_name(p.split("==")[0]) for p in pinned_requirements()}
    assert imported <= pinned, f"the agent imports {sorted(imported - pinned)}, not in AGENT_REQUIREMENTS"
    listed = {canonicalize_name(n) for n in AGENT_REQUIREMENTS}
    assert listed <= imported, (
        f"AGENT_REQUIREMENTS lists {sorted(listed - imported)}, which the agent never imports"
    )


def test_pins_are_exact_and_include_what_the_requirements_require() -> None:
    pins = pinned_requirements(["httpx"])
    names = {canonicalize_name(p.split("==")[0]) for p in pins}
    assert {"httpx", "httpcore", "h11", "anyio", "idna", "certifi"} <= names
    assert all("==" in p for p in pins)
    with pytest.raises(BuildError, match="no-such-dist-xyz"):
        pinned_requirements(["no-such-dist-xyz"])


@pytest.mark.parametrize("script", ["init.sh", "run-agent.sh", "udhcpc.script"])
def test_the_boot_scripts_parse_under_dash(script: str) -> None:
    dash = shutil.which("dash") or "/bin/sh"
    proc = subprocess.run([dash, "-n", str(NODE_DIR / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_node_files_land_where_the_kernel_and_busybox_init_look() -> None:
    files = _node_files()
    assert files["init"][1] == 0o755 and files["init"][0].startswith(b"#!/bin/sh")
    assert b"/usr/lib/scalerunner/run-agent" in files["etc/inittab"][0]
    assert b'"$AGENT" --config /etc/scalerunner/agent.toml' in files["usr/lib/scalerunner/run-agent"][0]


def test_the_restart_loop_runs_the_agent_and_waits_longer_after_each_quick_failure(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/args\nexit 3\n')
    agent.chmod(0o755)
    console = tmp_path / "console"
    env = {
        "SCALERUNNER_CONSOLE": str(console),
        "SCALERUNNER_AGENT": str(agent),
        "SCALERUNNER_RUN_DIR": str(tmp_path),
    }
    waits = []
    for _ in range(2):
        subprocess.run(["sh", str(NODE_DIR / "run-agent.sh")], env=env, check=True, timeout=30)
        waits.append((tmp_path / "scalerunner-agent.wait").read_text().strip())
    assert waits == ["1", "2"]  # the second run first waited 1 s; the next would wait 2, then 4 ... 30
    assert (tmp_path / "args").read_text().splitlines() == ["--config /etc/scalerunner/agent.toml"] * 2
    lines = console.read_text().splitlines()
    assert lines[:2] == [
        "scalerunner-init: scalerunner-agent starting",
        "scalerunner-init: scalerunner-agent exited with code 3 after 0s; restarting in 1s",
    ]
    assert lines[3].endswith("restarting in 2s")


def test_console_scripts_are_read_from_the_wheels_entry_points(tmp_path: Path) -> None:
    info = tmp_path / "scalerunner-0.1.0.dist-info"
    info.mkdir()
    (info / "entry_points.txt").write_text(
        "[console_scripts]\nscalerunner-agent = scalerunner.nodeagent.cli:main\n\n[other]\nx = y:z\n"
    )
    assert _console_scripts(tmp_path) == {"scalerunner-agent": "scalerunner.nodeagent.cli:main"}


@given(st.lists(st.binary(max_size=23), min_size=1, max_size=4))
def test_the_initrd_is_its_layers_back_to_back_padded_to_four_bytes(parts: list[bytes]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, data in enumerate(parts):
            paths.append(Path(tmp, f"p{i}"))
            paths[-1].write_bytes(data)
        out = Path(tmp, "initrd.img")
        spans = _concat(paths, out, align=4)
        whole = out.read_bytes()
    assert len(whole) % 4 == 0 and len(whole) - sum(map(len, parts)) < 4
    assert whole[: sum(map(len, parts))] == b"".join(parts)
    assert [whole[o : o + n] for o, n in spans] == parts
    assert set(whole[sum(map(len, parts)) :]) <= {0}


def test_the_cli_refuses_an_arch_this_machine_cannot_build_with_exit_2_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from scalerunner.cli import cli
    from scalerunner.imagebuild import builder

    monkeypatch.setattr(builder, "_host_arch", lambda: "amd64")
    monkeypatch.setattr(builder, "_binfmt_entries", lambda: ["status", "register"])
    result = CliRunner().invoke(cli, ["images", "build", "--arch", "arm64", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "cannot build arm64 on this amd64 machine" in result.output and "qemu-user-static" in result.output
    assert not (tmp_path / "out").exists()
    unknown = CliRunner().invoke(cli, ["images", "build", "--arch", "mips"])
    assert unknown.exit_code == 2 and "mips" in unknown.output


def test_a_build_as_another_user_than_root_stops_at_once_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from scalerunner.cli import cli
    from scalerunner.imagebuild import builder

    monkeypatch.setattr(builder, "_host_arch", lambda: "amd64")
    monkeypatch.setattr(builder.os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(cli, ["images", "build", "--arch", "amd64", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "run as root" in result.output
    assert not (tmp_path / "out").exists()
