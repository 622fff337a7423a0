"""docs/bench.md stays true to the code: every cause, check kind, check key and board key is in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalerunner.nodeagent.bench import checks, hardware, program

DOC = (Path(__file__).resolve().parent.parent / "docs" / "bench.md").read_text()


@pytest.mark.parametrize("cause", [c for c, _, _ in program._CAUSES] + ["timeout", "no_loader", "unknown"])
def test_every_programming_cause_is_documented(cause: str) -> None:
    assert f"`{cause}`" in DOC


@pytest.mark.parametrize(
    "kind", [checks.UartCheck, checks.FrequencyCheck, checks.PatternCheck, checks.LoopbackCheck]
)
def test_every_check_kind_and_key_is_documented(kind: type) -> None:
    tag = kind.__struct_config__.tag
    row = next(line for line in DOC.splitlines() if line.startswith(f"| `{tag}` |"))
    for field in kind.__struct_fields__:
        if field not in ("name", "timeout"):
            assert f"`{field}`" in row, (tag, field)


def test_every_board_and_sim_key_is_documented() -> None:
    for key in hardware.Program.__struct_fields__:
        assert f"`program.{key}`" in DOC, key
    for key in hardware.Signal.__struct_fields__:
        if key != "note":
            assert f"`signals[].{key}`" in DOC, key
    for key in checks.SimSpec.__struct_fields__:
        assert f"| `{key}` |" in DOC, key
    for key in hardware.ConnectorPin.__struct_fields__:
        assert f"`{key}`" in DOC, key
