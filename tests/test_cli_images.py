"""`scalerunner images add` checks its files before it talks to anyone: names a node can ask
for, no two files of one name, a firmware directory's files; each refusal names the file (exit 2)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from scalerunner.cli.images import collect, images

# No coordinator listens here: a command that got as far as the API would exit 3, not 2.
UNREACHABLE = ["--url", "http://127.0.0.1:9", "--token", "t"]


def add(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(images, ["add", "node", "1", "--arch", "amd64", *args, *UNREACHABLE])
    return result.exit_code, result.output


def test_a_firmware_directory_gives_its_top_level_files_sorted(tmp_path: Path) -> None:
    (tmp_path / "fw" / "overlays").mkdir(parents=True)
    for name in ("start4.elf", "fixup4.dat", ".hidden", "overlays/x.dtbo"):
        (tmp_path / "fw" / name).write_bytes(b"x")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    files = collect(kernel, (), (), (tmp_path / "fw",))
    assert [(p.name, role) for p, role in files] == [
        ("vmlinuz", "kernel"),
        ("fixup4.dat", "firmware"),
        ("start4.elf", "firmware"),
    ]


def test_files_nodes_cannot_ask_for_are_refused_naming_them(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    odd = tmp_path / "my initrd"
    odd.write_bytes(b"i")
    code, out = add("--kernel", str(kernel), "--initrd", str(odd))
    assert code == 2 and "my initrd" in out
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / "vmlinuz"
    twin.write_bytes(b"k2")
    code, out = add("--kernel", str(kernel), "--initrd", str(twin))
    assert code == 2 and "same name" in out and str(twin) in out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = add("--kernel", str(kernel), "--firmware", str(empty))
    assert code == 2 and "has no files" in out


def test_bad_names_are_usage_errors_and_good_input_reaches_the_api(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    result = CliRunner().invoke(
        images, ["add", "a/b", "1", "--arch", "amd64", "--kernel", str(kernel), *UNREACHABLE]
    )
    assert result.exit_code == 2 and "'a/b'" in result.output
    code, out = add("--kernel", str(kernel))
    assert code == 3 and "could not be reached" in out
