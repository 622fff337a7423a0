"""The node's job executor core: admission, the finished status, the log spool, artifact selection."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.nodeagent.config import ConfigError, parse_config
from scalerunner.nodeagent.jobs import LogSpool, admit, finished_status, select
from scalerunner.nodeagent.runtime import make_runtime
from scalerunner.nodeagent.runtime.base import JobEnd, JobResult
from scalerunner.protocol.mqtt import LOG_CHUNK_CHARS, Capacity, JobStatus, LogChunk, RunJob, decode, encode

CAP = Capacity(cpus=4, memory_mb=4096, slots=2)


def run(job: str = "j1", cpus: float = 1.0, memory_mb: int = 256) -> RunJob:
    return RunJob(job=job, attempt=1, argv=["true"], cpus=cpus, memory_mb=memory_mb)


# -- admission ------------------------------------------------------------------------------------


def test_admit_takes_a_job_that_fits() -> None:
    assert admit("n1", run(), [run("j0")], CAP, draining=False) is None


@pytest.mark.parametrize(
    ("new", "busy", "cap", "draining", "says"),
    [
        (run(), [], CAP, True, "node n1 is draining, cannot accept job j1 attempt 1"),
        (run(), [run("a"), run("b")], CAP, False, "all 2 job slots busy"),
        (run(cpus=2), [run("a", cpus=3)], CAP, False, "has 4 cpus, 5 would be in use"),
        (run(memory_mb=4000), [run("a")], CAP, False, "has 4096 MB, 4256 MB would be in use"),
        (run(), [], Capacity(cpus=1, memory_mb=1, slots=0), False, "has no job slots"),
        (run(), [], None, False, "does not know its capacity"),
    ],
)
def test_admit_refuses_with_a_reason_naming_node_and_job(
    new: RunJob, busy: list[RunJob], cap: Capacity | None, draining: bool, says: str
) -> None:
    why = admit("n1", new, busy, cap, draining=draining)
    assert why is not None and says in why and "n1" in why and "j1" in why


@given(st.lists(st.floats(0.1, 4), max_size=5), st.floats(0.1, 4))
def test_admit_never_oversubscribes_cpus(busy: list[float], new: float) -> None:
    cap = Capacity(cpus=4, memory_mb=10**6, slots=10)
    ok = admit("n1", run(cpus=new), [run(f"b{i}", cpus=c) for i, c in enumerate(busy)], cap, draining=False)
    assert (ok is None) == (sum(busy) + new <= 4 + 1e-9)


# -- finished status --------------------------------------------------------------------------------


def test_finished_status_carries_exit_code_end_and_notes() -> None:
    s = finished_status(
        "n1",
        run(),
        JobResult(JobEnd.EXITED, 3),
        ts=1.0,
        log_chunks=7,
        uploaded=["out.txt"],
        notes=["artifact glob 'x' matched nothing"],
    )
    back = decode(encode(s), JobStatus)  # what the coordinator will read is a valid payload
    assert (back.phase, back.end, back.exit_code, back.log_chunks) == ("finished", "exited", 3, 7)
    assert back.artifacts == ["out.txt"] and "matched nothing" in back.detail


def test_finished_status_timeout_cancel_and_fault() -> None:
    t = finished_status("n1", run(), JobResult(JobEnd.TIMEOUT, 124, "timeout after 1 s"), ts=0, log_chunks=0)
    assert (t.end, t.exit_code) == ("timeout", 124)
    c = finished_status("n1", run(), None, ts=0, log_chunks=2, cancelled="user asked")
    assert (c.end, c.detail) == ("cancelled", "cancelled: user asked")
    f = finished_status("n1", run(), None, ts=0, log_chunks=0, fault="job j1: no image")
    assert (f.end, f.detail) == ("fault", "job j1: no image")
    for s in (t, c, f):
        decode(encode(s), JobStatus)


# -- log spool ----------------------------------------------------------------------------------------


def chunks(spool: LogSpool) -> list[LogChunk]:
    out = []
    for seq in range(spool.count):
        data = spool.chunk(seq)
        assert data is not None
        out.append(decode(data, LogChunk))
    return out


@given(
    writes=st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.text(max_size=200)), max_size=20),
    cut=st.integers(0, 5),
)
def test_spool_round_trips_text_split_anywhere(
    tmp_path_factory: pytest.TempPathFactory, writes: list[tuple[str, str]], cut: int
) -> None:
    path = tmp_path_factory.mktemp("spool") / "log.spool"
    spool = LogSpool(path, node="n1", job="j1", attempt=2, clock=lambda: 5.0, chunk_chars=50)
    for stream, text in writes:
        data = text.encode()
        k = min(cut, len(data))
        spool.feed(stream, data[:k])  # type: ignore[arg-type]
        spool.feed(stream, data[k:])  # type: ignore[arg-type]
    spool.close()
    got = chunks(spool)
    assert [c.seq for c in got] == list(range(spool.count))
    assert all(len(c.data) <= 50 and c.attempt == 2 for c in got)
    for stream in ("stdout", "stderr"):
        expect = "".join(t for s, t in writes if s == stream)
        assert "".join(c.data for c in got if c.stream == stream) == expect
    spool.release()
    assert not path.exists() and spool.chunk(0) is None


def test_spool_replaces_invalid_utf8_and_keeps_a_split_character_whole(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "s", node="n1", job="j1", attempt=1, clock=lambda: 0.0)
    euro = "€".encode()
    spool.feed("stdout", b"a" + euro[:1])
    spool.feed("stdout", euro[1:] + b"\xff")
    spool.feed("stderr", euro[:2])
    spool.close()  # the cut-off character at the end becomes U+FFFD
    assert [(c.stream, c.data) for c in chunks(spool)] == [
        ("stdout", "a"),
        ("stdout", "€\ufffd"),
        ("stderr", "\ufffd"),
    ]


def test_spool_chunks_stay_under_the_payload_limit(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "s", node="n1", job="j1", attempt=1, clock=lambda: 0.0)
    spool.feed("stdout", b'"\x01' * 40000)  # worst case for JSON escaping
    assert spool.count == -(-80000 // LOG_CHUNK_CHARS)
    for seq in range(spool.count):
        data = spool.chunk(seq)
        assert data is not None and len(data) < 64 * 1024
        decode(data, LogChunk)


# -- artifacts ------------------------------------------------------------------------------------------


def test_select_finds_files_and_refuses_escapes_and_symlinks(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "out" / "deep").mkdir(parents=True)
    (work / "out" / "a.txt").write_text("a")
    (work / "out" / "deep" / "b.txt").write_text("b")
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", work / "out" / "link.txt")
    os.symlink(tmp_path, work / "up")
    sel = select(work, ["out/**/*.txt", "../secret", "/etc/passwd", "up/secret", "none/*"])
    assert [a.name for a in sel.artifacts] == ["out/a.txt", "out/deep/b.txt"]
    text = "\n".join(sel.problems)
    assert "artifact out/link.txt is or lies under a symbolic link" in text
    assert "'../secret' must not use '..'" in text
    assert "'/etc/passwd' must be a relative path" in text
    assert "artifact up/secret is or lies under a symbolic link" in text
    assert "'none/*' matched nothing" in text


class NoLink:
    """A link that is never up: for executor tests that publish nothing."""

    online = False

    async def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
        raise AssertionError("nothing to publish")

    async def wait_online(self) -> None:
        await asyncio.Event().wait()


# -- config and registry --------------------------------------------------------------------------------

MINIMAL = 'cluster = "lab"\nnode = "n1"\n[broker]\nhost = "h"\npassword = "x"\n'


def test_jobs_config_keys_and_defaults(tmp_path: Path) -> None:
    c = parse_config(MINIMAL, source="a.toml")
    assert (c.job_runtime, c.job_dir, c.job_keep_logs) == ("process", None, 3600.0)
    c = parse_config(
        MINIMAL + '[jobs]\nruntime = "process"\ndir = "jobs"\nkeep_logs = 60\n',
        source="a.toml",
        base_dir=tmp_path,
    )
    assert (c.job_dir, c.job_keep_logs) == (tmp_path / "jobs", 60.0)
    assert make_runtime(c.job_runtime).name == "process"


@pytest.mark.parametrize(
    ("text", "key"), [('runtime = "docker"', "jobs.runtime"), ("keep_logs = -1", "jobs.keep_logs")]
)
def test_a_bad_jobs_key_is_refused_naming_it(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + f"[jobs]\n{text}\n", source="a.toml")
    assert info.value.key == key


def test_the_agent_loads_the_jobs_code_only_with_a_job_and_httpx_only_with_artifacts() -> None:
    import subprocess
    import sys

    code = (
        "import sys, scalerunner.nodeagent.agent;"
        "lazy = ('httpx', 'scalerunner.nodeagent.jobs', 'scalerunner.nodeagent.images');"
        "print([m for m in lazy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # the 30 MB budget of docs/agent.md: httpx alone is ~10 MB, the jobs code ~1.5 MB until a job comes
    assert out.strip() == "[]"


def test_the_executor_clears_only_stale_attempt_dirs_on_start(tmp_path: Path) -> None:
    from scalerunner.nodeagent.jobs import JobExecutor
    from scalerunner.nodeagent.runtime.process import ProcessRuntime

    jobs = tmp_path / "jobs"
    (jobs / "build-7-3" / "work").mkdir(parents=True)
    (jobs / "keep-me").mkdir()
    (jobs / "notes.txt").write_text("x")

    async def scenario() -> None:
        ex = JobExecutor(
            cluster="lab",
            node="n1",
            runtime=ProcessRuntime(),
            work_dir=jobs,
            capacity=CAP,
            link=NoLink(),
            draining=lambda: False,
        )
        await ex.start()
        await ex.stop()

    asyncio.run(scenario())
    assert sorted(p.name for p in jobs.iterdir()) == ["keep-me", "notes.txt"]


_ENTRY = st.tuples(
    st.sampled_from(["a", "b", "a/c", "a/c/d", "e"]),  # parent directory
    st.sampled_from(["f1", "f2", "l1", "l2"]),  # f*: a file, l*: a symlink
    st.sampled_from(["inside", "outside", "dir-inside", "dir-outside"]),  # where a link points
)


@given(
    entries=st.lists(_ENTRY, max_size=12),
    patterns=st.lists(
        st.sampled_from(["**/*", "*", "a/**", "*/f1", "a/*/*", "../*", "/etc/*"]), min_size=1, max_size=3
    ),
)
def test_select_never_hands_out_a_file_outside_or_behind_a_link_and_finds_every_plain_file(
    tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[str, str, str]], patterns: list[str]
) -> None:
    base = tmp_path_factory.mktemp("art")
    work, outside = base / "work", base / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret").write_text("s")
    for parent, name, target in entries:
        d = work / parent
        d.mkdir(parents=True, exist_ok=True)
        p = d / name
        if p.exists() or p.is_symlink():
            continue
        if name.startswith("f"):
            p.write_text(name)
        else:
            dest = {
                "inside": work / "a",
                "outside": outside / "secret",
                "dir-inside": work,
                "dir-outside": outside,
            }
            os.symlink(dest[target], p)
    work.mkdir(exist_ok=True)
    sel = select(work, patterns)
    root = work.resolve()
    for art in sel.artifacts:
        assert art.path.resolve().is_relative_to(root)
        walk = root
        for part in Path(art.name).parts:
            walk = walk / part
            assert not walk.is_symlink(), art.name
        assert art.path.is_file()
    if "**/*" in patterns:  # every plain file reached without a link is found
        plain = set()
        for dirpath, _dirs, filenames in os.walk(root):  # os.walk does not follow links
            for f in filenames:
                p = Path(dirpath) / f
                if not p.is_symlink():
                    plain.add(p.relative_to(root).as_posix())
        assert plain <= {a.name for a in sel.artifacts}


def test_a_run_the_node_cannot_make_a_directory_for_is_refused_naming_it(tmp_path: Path) -> None:
    from scalerunner.nodeagent.jobs import JobExecutor
    from scalerunner.nodeagent.runtime.process import ProcessRuntime
    from scalerunner.protocol.mqtt import job_command

    jobs = tmp_path / "jobs"

    async def scenario() -> str:
        ex = JobExecutor(
            cluster="lab",
            node="n1",
            runtime=ProcessRuntime(),
            work_dir=jobs,
            capacity=CAP,
            link=NoLink(),
            draining=lambda: False,
        )
        await ex.start()
        try:
            (jobs / "j1-1").write_text("a file where the attempt's directory goes")
            reply = ex.handle(job_command("run", run()))
            assert not reply.ok and ex.running() == []
            return reply.error
        finally:
            await ex.stop()

    error = asyncio.run(scenario())
    assert error.startswith(f"node n1 cannot make {jobs / 'j1-1'}: ")
