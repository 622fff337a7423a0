"""Job payloads on MQTT (run, cancel, resend_log, status, log chunks): round trips, refusals, docs."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.protocol.mqtt import (
    LOG_CHUNK_CHARS,
    MAX_PAYLOAD,
    CancelJob,
    Command,
    HilRun,
    JobStatus,
    LogChunk,
    PayloadError,
    ResendLog,
    RunJob,
    command_args,
    decode,
    encode,
    job_command,
)

MQTT_MD = (Path(__file__).resolve().parent.parent / "docs" / "mqtt.md").read_text()
names = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?\Z")
attempts = st.integers(1, 2**31)

runs = st.builds(
    RunJob,
    job=names,
    attempt=attempts,
    argv=st.lists(st.text(max_size=20), min_size=1, max_size=5),
    image=st.sampled_from(["", "localhost:5000/busybox:1", "docker.io/library/alpine@sha256:" + "a" * 64]),
    env=st.dictionaries(st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,10}\Z"), st.text(max_size=20), max_size=4),
    cpus=st.floats(0.1, 64),
    memory_mb=st.integers(1, 10**6),
    timeout_s=st.floats(0.5, 10**5),
    artifacts=st.lists(st.text(min_size=1, max_size=20), max_size=3),
    lease_s=st.floats(1, 600),
    upload_url=st.just("http://127.0.0.1:8080/api/v1/jobs/j/attempts/1/artifacts"),
    upload_token=st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    hil=st.none()
    | st.builds(
        HilRun,
        board=st.sampled_from(["arty_a7_35t", "icebreaker"]),
        bitstream=st.text(min_size=1, max_size=30),
        checks=st.lists(
            st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8) | st.floats(0, 1e6)),
            max_size=3,
        ),
        sim=st.none() | st.just({"parameters": {"PRESCALE": 5}, "time_scale": 262144}),
    ),
)


@given(runs)
def test_run_args_round_trip_through_a_command(run: RunJob) -> None:
    command = decode(encode(job_command("run", run)), Command)
    assert command.cmd == "run"
    assert command_args(command, RunJob) == run
    assert command_args(command, RunJob).command() == tuple(run.argv or ())


def test_a_script_runs_under_sh() -> None:
    assert RunJob(job="j1", attempt=1, script="echo hi").command() == ("/bin/sh", "-c", "echo hi")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"job": "j1", "attempt": 1}, "exactly one of argv and script"),
        ({"job": "j1", "attempt": 1, "argv": ["a"], "script": "b"}, "exactly one of argv and script"),
        ({"job": "j1", "attempt": 1, "argv": []}, "argv must not be empty"),
        ({"job": "j1", "attempt": 0, "argv": ["a"]}, r"\$.attempt"),
        ({"job": "J1", "attempt": 1, "argv": ["a"]}, r"\$.job"),
        ({"job": "j1", "attempt": 1, "argv": ["a"], "env": {"A=B": "c"}}, r"\$.env"),
        ({"job": "j1", "attempt": 1, "argv": ["a"], "memory_mb": 0}, r"\$.memory_mb"),
    ],
)
def test_bad_run_args_are_refused_naming_the_field(args: dict[str, object], match: str) -> None:
    with pytest.raises(PayloadError, match=match) as info:
        command_args(Command(cmd="run", args=args), RunJob)
    assert "run args" in str(info.value)


@given(names, attempts, st.lists(st.integers(0, 2**40), min_size=1, max_size=50))
def test_resend_and_cancel_args_round_trip(job: str, attempt: int, seqs: list[int]) -> None:
    resend = ResendLog(job=job, attempt=attempt, seqs=seqs)
    assert command_args(decode(encode(job_command("resend_log", resend)), Command), ResendLog) == resend
    cancel = CancelJob(job=job, attempt=attempt, reason="operator")
    assert command_args(decode(encode(job_command("cancel", cancel)), Command), CancelJob) == cancel


def test_a_resend_request_is_bounded() -> None:
    with pytest.raises(PayloadError, match=r"\$.seqs"):
        command_args(Command(cmd="resend_log", args={"job": "j", "attempt": 1, "seqs": []}), ResendLog)
    many = {"job": "j", "attempt": 1, "seqs": list(range(1025))}
    with pytest.raises(PayloadError, match=r"\$.seqs"):
        command_args(Command(cmd="resend_log", args=many), ResendLog)


statuses = st.one_of(
    st.builds(
        JobStatus,
        node=names,
        job=names,
        attempt=attempts,
        phase=st.sampled_from(["started", "heartbeat"]),
        log_chunks=st.integers(0, 10**6),
    ),
    st.builds(
        JobStatus,
        node=names,
        job=names,
        attempt=attempts,
        phase=st.just("finished"),
        end=st.sampled_from(["exited", "timeout", "killed", "cancelled", "fault"]),
        exit_code=st.integers(0, 255),
        detail=st.text(max_size=40),
        artifacts=st.lists(st.text(min_size=1, max_size=10), max_size=3),
    ),
)


@given(statuses)
def test_job_status_round_trips(status: JobStatus) -> None:
    assert decode(encode(status), JobStatus) == status


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"phase": "finished"}, "end is given exactly when phase is finished"),
        ({"phase": "heartbeat", "end": "exited", "exit_code": 0}, "end is given exactly"),
        ({"phase": "finished", "end": "exited"}, "needs its exit_code"),
        ({"phase": "finished", "end": "exited", "exit_code": 256}, r"\$.exit_code"),
        ({"phase": "running"}, r"\$.phase"),
    ],
)
def test_bad_job_status_is_refused(fields: dict[str, object], match: str) -> None:
    raw = msgspec.json.encode({"schema": 1, "node": "n1", "job": "j1", "attempt": 1, **fields})
    with pytest.raises(PayloadError, match=match):
        decode(raw, JobStatus)


@given(st.text(max_size=LOG_CHUNK_CHARS), st.integers(0, 2**53))
def test_a_full_log_chunk_of_any_text_fits_in_a_payload(text: str, seq: int) -> None:
    chunk = LogChunk(node="n1", job="j1", attempt=1, seq=seq, stream="stdout", data=text)
    assert decode(encode(chunk), LogChunk) == chunk


def test_the_worst_case_log_chunk_still_fits() -> None:
    # every character a control character: JSON writes each as a 6-byte \\u escape
    chunk = LogChunk(node="n1", job="j1", attempt=1, seq=0, stream="stderr", data="\x01" * LOG_CHUNK_CHARS)
    assert len(encode(chunk)) <= MAX_PAYLOAD
    assert decode(encode(chunk), LogChunk) == chunk
    too_long = msgspec.json.encode(
        {
            "schema": 1,
            "node": "n1",
            "job": "j1",
            "attempt": 1,
            "seq": 0,
            "stream": "stdout",
            "data": "x" * (LOG_CHUNK_CHARS + 1),
        }
    )
    with pytest.raises(PayloadError, match=r"\$.data"):
        decode(too_long, LogChunk)


@pytest.mark.parametrize("kind", [JobStatus, LogChunk, RunJob, CancelJob, ResendLog])
def test_docs_mqtt_md_lists_every_field_of_the_job_payloads(kind: type[msgspec.Struct]) -> None:
    row = re.search(rf"^\| `{kind.__name__}` \| (.+) \|$", MQTT_MD, re.M)
    assert row, f"{kind.__name__} missing from docs/mqtt.md"
    documented = set(re.findall(r"`(\w+)`", row.group(1)))
    for name in kind.__struct_fields__:
        if name != "schema":
            assert name in documented, f"{kind.__name__}.{name} missing from docs/mqtt.md"
