"""Hardware as data: the shipped connector and boards load; every bad file names its file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scalerunner.nodeagent.bench.errors import BenchConfigError
from scalerunner.nodeagent.bench.hardware import (
    DEFAULT_BOARDS_DIR,
    DEFAULT_CONNECTOR,
    load_bench,
    load_board,
    load_connector,
)

ARTY = (DEFAULT_BOARDS_DIR / "arty_a7_35t.toml").read_text()


def test_shipped_bench_loads_three_boards_on_distinct_pins_and_ports() -> None:
    bench = load_bench()
    assert sorted(bench.boards) == ["arty_a7_35t", "icebreaker", "tangnano9k"]
    lines = [(s.chip, s.line) for b in bench.boards.values() for s in bench.resolve(b).values()]
    assert len(lines) == len(set(lines)) == 21
    arty = bench.resolve(bench.boards["arty_a7_35t"])
    assert (arty["led0"].pin, arty["led0"].chip, arty["led0"].line) == (11, "gpiochip0", 17)
    assert arty["loop_in"].direction == "in"


def test_connector_has_40_pins_and_reserves_console_and_id_eeprom() -> None:
    conn = load_connector()
    assert [p.number for p in conn.pins] == list(range(1, 41))
    for number in (8, 10, 27, 28):
        pin = conn.pin(number)
        assert pin is not None and pin.kind == "gpio" and pin.allow == ()
    assert {p.voltage for p in conn.pins if p.kind == "gpio"} == {3.3}


def _board(tmp_path: Path, text: str, name: str = "arty_a7_35t") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ("pin = 11\n", "pin = 99\n", "signals[0].pin", "has no pin 99"),
        ("pin = 12\n", "pin = 11\n", "signals[1].pin", "also used by signals[0]"),
        ("pin = 11\n", "pin = 6\n", "signals[0].pin", "is ground, not a GPIO"),
        ("pin = 11\nline = 17\n", "pin = 8\nline = 14\n", "signals[0].direction", "reserved"),
        ("line = 17\n", "line = 4\n", "signals[0].line", "gpiochip0 line 17, not line 4"),
        ('direction = "out"\n', 'direction = "sideways"\n', "signals[0].direction", "Invalid enum"),
        ('usb_port = "1-1.1"', 'usb_port = "usb one"', "program.usb_port", "regex"),
        ('name = "led1"', 'name = "led0"', "signals[1].name", "named twice"),
        ('suffixes = [".bit"]', 'suffixes = ["bit"]', "program.suffixes[0]", "not a suffix"),
        ("timeout = 120.0\n", "timeout = 120.0\nspeed = 3\n", "program.speed", "unknown key"),
        ("hz = 100_000_000\n", "", "clock.hz", "required key is missing"),
    ],
)
def test_a_bad_board_file_names_file_and_key(
    tmp_path: Path, old: str, new: str, key: str, words: str
) -> None:
    assert old in ARTY
    path = _board(tmp_path, ARTY.replace(old, new, 1))
    with pytest.raises(BenchConfigError) as err:
        load_board(path, load_connector())
    assert err.value.path == str(path) and err.value.key == key
    assert words in err.value.detail


def test_board_name_must_match_its_file(tmp_path: Path) -> None:
    with pytest.raises(BenchConfigError, match=r"arty2\.toml: name: 'arty_a7_35t' must match"):
        load_board(_board(tmp_path, ARTY, "arty2"), load_connector())


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(BenchConfigError, match=r"arty_a7_35t\.toml: not valid TOML"):
        load_board(_board(tmp_path, ARTY + "\n[[signals]\n"), load_connector())


def _copy_bench(tmp_path: Path) -> Path:
    d = tmp_path / "boards"
    shutil.copytree(DEFAULT_BOARDS_DIR, d)
    return d


def test_a_fourth_board_is_refused(tmp_path: Path) -> None:
    d = _copy_bench(tmp_path)
    (d / "arty_a7_100t.toml").write_text(ARTY.replace('name = "arty_a7_35t"', 'name = "arty_a7_100t"'))
    with pytest.raises(BenchConfigError, match="4 boards; a node takes at most 3"):
        load_bench(d)


def test_two_boards_on_one_pin_or_usb_port_are_refused(tmp_path: Path) -> None:
    d = _copy_bench(tmp_path)
    ice = (d / "icebreaker.toml").read_text()
    (d / "icebreaker.toml").write_text(ice.replace("pin = 29\nline = 5\n", "pin = 11\nline = 17\n"))
    with pytest.raises(BenchConfigError) as err:
        load_bench(d)
    assert err.value.key == "signals[0].pin" and "also arty_a7_35t's" in err.value.detail
    (d / "icebreaker.toml").write_text(ice.replace('usb_port = "1-1.2"', 'usb_port = "1-1.1"'))
    with pytest.raises(
        BenchConfigError, match=r"icebreaker\.toml: program\.usb_port: 1-1\.1 is also arty_a7_35t's"
    ):
        load_bench(d)


def test_connector_refuses_a_line_used_twice(tmp_path: Path) -> None:
    text = DEFAULT_CONNECTOR.read_text().replace("line = 3\n", "line = 2\n", 1)
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(BenchConfigError) as err:
        load_connector(path)
    assert err.value.key == "pins[4].line" and "gpiochip0 line 2 is also pins[2]" in err.value.detail
