"""The docs say what the code does: the message table and drop reasons match the code."""

from __future__ import annotations

import re
from pathlib import Path

from scalerunner.protocol import DROP_REASONS, layouts

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_MD = (ROOT / "docs" / "protocol.md").read_text()

_SIZES = {"B": "u8", "b": "i8", "H": "u16", "h": "i16", "I": "u32", "i": "i32"}


def test_message_table_in_protocol_md_matches_layouts() -> None:
    section = PROTOCOL_MD.split("## 3. Messages", 1)[1].split("### Enumerations", 1)[0]
    rows = re.findall(r"^\| (0x[0-9A-F]{2}) \| `(\w+)` \| ([^|]+) \|", section, re.M)
    documented = {name: (int(tid, 16), body.strip()) for tid, name, body in rows}
    for name, tid, fields, tail, tail_kind in layouts.MESSAGES:
        assert name in documented, f"{name} missing from docs/protocol.md"
        doc_tid, body = documented[name]
        assert doc_tid == tid, name
        parts = [f"{fname} {_SIZES[fmt]}" for fname, fmt in fields]
        if tail:
            parts.append(f"{tail} tail" + (" (UTF-8)" if tail_kind == "str" else ""))
        expected = f"`{', '.join(parts)}`" if parts else "(empty)"
        assert body.replace("` (UTF-8)", " (UTF-8)`") == expected, name
    assert len(documented) == len(layouts.MESSAGES)


def test_every_drop_reason_is_documented() -> None:
    for reason in DROP_REASONS:
        assert f"| `{reason}` |" in PROTOCOL_MD, reason


def test_every_enum_is_documented_with_its_values() -> None:
    for enum_name, members in layouts.ENUMS:
        row = re.search(rf"^\| `{enum_name}` \| (.+) \|$", PROTOCOL_MD, re.M)
        assert row, enum_name
        assert row.group(1) == ", ".join(f"{v} `{k}`" for k, v in members)


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
