"""Checks files: the shipped ones load; bad ones name the file and key; board mismatches too."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalerunner.nodeagent.bench.checks import (
    FrequencyCheck,
    LoopbackCheck,
    PatternCheck,
    UartCheck,
    check_against,
    load_checks,
)
from scalerunner.nodeagent.bench.errors import BenchConfigError
from scalerunner.nodeagent.bench.hardware import load_bench

DESIGNS = Path(__file__).resolve().parent.parent / "hardware" / "designs"


def test_shipped_checks_load_and_fit_their_boards() -> None:
    bench = load_bench()
    counter = load_checks(DESIGNS / "counter" / "checks.toml")
    assert [type(c) for c in counter.checks] == [FrequencyCheck, PatternCheck]
    assert counter.sim is not None and counter.sim.time_scale == 2**18
    assert counter.sim.parameters == {"PRESCALE": 5}
    check_against(counter, bench.boards["arty_a7_35t"])
    uart = load_checks(DESIGNS / "uart_banner" / "checks.toml")
    assert [type(c) for c in uart.checks] == [UartCheck, LoopbackCheck]
    check_against(uart, bench.boards["icebreaker"])


def _checks(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "checks.toml"
    path.write_text(body)
    return path


UART = '[[checks]]\nname = "u"\nkind = "uart"\nsignal = "uart_tx"\nbaud = 9600\ntimeout = 1\n'


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        (UART, "checks[0]", "exactly one of expect and regex"),
        (UART + 'expect = "a"\nregex = "b"\n', "checks[0]", "exactly one of expect and regex"),
        (UART + 'regex = "(unclosed"\n', "checks[0].regex", "not a regular expression"),
        (UART + 'expect = "a"\n' + UART + 'expect = "b"\n', "checks[1].name", "also checks[0]"),
        (
            '[[checks]]\nname = "x"\nkind = "sparkle"\ntimeout = 1\n',
            "checks[0].kind",
            "Invalid value 'sparkle'",
        ),
        (UART + 'expect = "a"\nparity = "even"\n', "checks[0].parity", "unknown key"),
        (UART.replace("timeout = 1\n", "") + 'expect = "a"\n', "checks[0].timeout", "required key"),
        (
            '[[checks]]\nname = "p"\nkind = "pattern"\nsignals = ["a", "b"]\nmode = "sequence"\n'
            "sequence = [1, 4]\ntimeout = 1\n",
            "checks[0].sequence[1]",
            "4 does not fit 2 signals",
        ),
        (
            '[[checks]]\nname = "l"\nkind = "loopback"\ndrive = "a"\nread = "b"\nhold = 1\ntimeout = 2\n',
            "checks[0].timeout",
            "shorter than len(values) * hold",
        ),
        ("[sim]\ntime_scale = 1\n", "checks", "required key is missing"),
    ],
)
def test_a_bad_checks_file_names_file_and_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    path = _checks(tmp_path, body)
    with pytest.raises(BenchConfigError) as err:
        load_checks(path)
    assert err.value.path == str(path) and err.value.key == key
    assert words in err.value.detail


def test_check_against_names_a_missing_signal_and_a_wrong_direction(tmp_path: Path) -> None:
    board = load_bench().boards["arty_a7_35t"]
    cf = load_checks(_checks(tmp_path, UART.replace("uart_tx", "uart_rx") + 'expect = "a"\n'))
    with pytest.raises(BenchConfigError, match=r"checks\[0\]: board arty_a7_35t has no 'uart_rx'"):
        check_against(cf, board)
    cf = load_checks(
        _checks(
            tmp_path,
            '[[checks]]\nname = "l"\nkind = "loopback"\ndrive = "loop_out"\nread = "loop_in"\ntimeout = 1\n',
        )
    )
    with pytest.raises(
        BenchConfigError, match="signal 'loop_out' of board arty_a7_35t is 'out', this check needs 'in'"
    ):
        check_against(cf, board)


def test_a_json_checks_file_is_the_same_schema(tmp_path: Path) -> None:
    """A job's spec carries its checks as tables (``hil.checks``); written as JSON they load alike."""
    import json

    tables = [{"name": "u", "kind": "uart", "signal": "uart_tx", "baud": 9600, "expect": "hi", "timeout": 1}]
    path = tmp_path / "checks.json"
    path.write_text(json.dumps({"checks": tables}))
    (check,) = load_checks(path).checks
    assert isinstance(check, UartCheck) and check.expect == "hi"
    path.write_text(json.dumps({"checks": [{**tables[0], "baud": 1}]}))
    with pytest.raises(BenchConfigError) as err:
        load_checks(path)
    assert err.value.key == "checks[0].baud" and "Expected `float` >= 50" in err.value.detail
    path.write_text("{")
    with pytest.raises(BenchConfigError, match=r"checks\.json: not valid JSON"):
        load_checks(path)
