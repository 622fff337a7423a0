"""Job spec files: what is accepted, and every refusal names the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.jobs.spec import JobSpec, JobSpecError, load_spec, parse_spec, spec_from_mapping

FULL = """
name: firmware tests
image: localhost:5000/ci/busybox:1.36
command: [make, -C, fw, test]
arch: arm64
labels: [kvm, "pool=ci"]
cpus: 2
memory: 2G
timeout: 30m
env: {CI: "1"}
artifacts: [build/report.xml, "logs/*.txt"]
retries: 1
priority: 5
project: firmware
hil: {board: icebreaker, bitstream: build/top.bin, checks: [{uart: "hello", within: 2}]}
"""


def test_a_full_spec_is_read_with_sizes_and_durations_made_canonical(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(FULL)
    s = load_spec(path)
    assert (s.memory, s.timeout, s.cpus, s.arch) == (2048, 1800.0, 2.0, "arm64")
    assert s.argv() == ("make", "-C", "fw", "test")
    assert (
        s.hil is not None and s.hil.board == "icebreaker" and s.hil.checks == [{"uart": "hello", "within": 2}]
    )
    as_json = tmp_path / "job.json"
    as_json.write_text(json.dumps(yaml.safe_load(FULL)))
    assert load_spec(as_json) == s


def test_a_command_string_is_split_like_a_shell_and_a_script_runs_under_sh() -> None:
    assert parse_spec("command: make 'a b'", "j.yaml").argv() == ("make", "a b")
    assert parse_spec("script: echo hi | wc", "j.yaml").argv() == ("/bin/sh", "-c", "echo hi | wc")


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ("script: x\nlables: [a]", "lables", "unknown key"),
        ("script: x\nhil: {board: b, bitstrem: x}", "hil.bitstrem", "unknown key"),
        ("command: a\nscript: b", "command", "exactly one of command and script"),
        ("name: x", "command", "exactly one of command and script"),
        ("script: x\nmemory: lots", "memory", "not a size"),
        ("script: x\ntimeout: soon", "timeout", "not a duration"),
        ("script: x\ncpus: 0", "cpus", "> 0"),
        ("script: x\narch: sparc", "arch", "'sparc'"),
        ("script: x\nretries: 99", "retries", "<= 10"),
        ("script: x\nproject: My Project", "project", "regex"),
        ("script: x\nimage: 'Busybox:1'", "image", ""),
        ("script: x\nimage: 'busybox:1 2'", "image", ""),
        ("script: x\nartifacts: [/etc/passwd]", "artifacts[0]", "relative"),
        ("script: x\nartifacts: [out/../../etc]", "artifacts[0]", "'..'"),
        ("script: x\nlabels: ['a b']", "labels[0]", ""),
        ("script: x\nenv: {'A-B': x}", "env", "a name in it"),
    ],
)
def test_bad_specs_are_refused_naming_file_and_key(text: str, key: str, detail: str) -> None:
    with pytest.raises(JobSpecError) as info:
        parse_spec(text, "ci/job.yaml")
    assert info.value.key == key
    assert detail in info.value.detail
    assert str(info.value).startswith(f"ci/job.yaml: key {key!r}")


def test_files_that_are_not_specs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match=r"job\.json: not valid JSON"):
        parse_spec("{", "job.json")
    with pytest.raises(JobSpecError, match="not valid YAML"):
        parse_spec("a: [", "job.yaml")
    with pytest.raises(JobSpecError, match="an object of keys, not list"):
        parse_spec("- a", "job.yaml")
    with pytest.raises(JobSpecError, match=r"missing\.yaml: cannot read"):
        load_spec(tmp_path / "missing.yaml")


@given(st.integers(1, 10**6), st.sampled_from(["", "M", "MB", "Mi", "MiB"]))
def test_memory_in_mb_reads_the_same_with_or_without_a_unit(mb: int, unit: str) -> None:
    assert parse_spec(f"script: x\nmemory: '{mb}{unit}'", "j.yaml").memory == mb


@given(st.integers(1, 160), st.sampled_from([("s", 1), ("m", 60), ("h", 3600)]))
def test_durations_convert_to_seconds(n: int, unit: tuple[str, int]) -> None:
    assert parse_spec(f"script: x\ntimeout: {n}{unit[0]}", "j.yaml").timeout == n * unit[1]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(
    [
        "name",
        "image",
        "command",
        "script",
        "arch",
        "labels",
        "cpus",
        "memory",
        "timeout",
        "env",
        "artifacts",
        "retries",
        "priority",
        "project",
        "hil",
        "bogus",
    ]
)


@given(st.dictionaries(keys, json_values, max_size=6))
def test_any_object_is_either_a_valid_spec_or_a_spec_error(data: dict[str, object]) -> None:
    try:
        s = spec_from_mapping(data, "fuzz.json")
    except JobSpecError as exc:
        assert exc.source == "fuzz.json"
        return
    assert isinstance(s, JobSpec)
    assert (s.command is None) != (s.script is None)
    assert all(not a.startswith("/") and ".." not in a.split("/") for a in s.artifacts)


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4))
def test_artifact_paths_never_leave_the_work_directory(paths: list[str]) -> None:
    try:
        s = spec_from_mapping({"script": "x", "artifacts": paths})
    except JobSpecError as exc:
        assert exc.key.startswith("artifacts[")
        return
    for p in s.artifacts:
        assert not p.startswith("/") and ".." not in p.split("/") and "\\" not in p and "\x00" not in p
