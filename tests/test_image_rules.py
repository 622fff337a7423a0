"""The image registry's decisions (pxe/rules.py): names, which image a node boots, what a
rollback goes back to, what a removal may delete, which blobs are garbage. hypothesis runs the
promotion history against a plain stack model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.pxe import rules
from scalerunner.coordinator.store.base import (
    ImageFileRecord,
    ImageRecord,
    OverrideRecord,
    PromotionRecord,
)

VERSIONS = st.sampled_from(["1", "2", "3", "4"])


def img(version: str, arch: str = "amd64", name: str = "node", digests: tuple[str, ...] = ()) -> ImageRecord:
    files = tuple(
        ImageFileRecord(name=f"f{i}", role="kernel" if i == 0 else "initrd", digest=d, size=1)
        for i, d in enumerate(digests or ((version * 64)[:64],))
    )
    return ImageRecord(name=name, arch=arch, version=version, cmdline="", created_at=0.0, files=files)


# -- names --------------------------------------------------------------------------------------


def test_names_and_versions_refuse_slashes_dots_and_odd_characters() -> None:
    for good in ("node", "node-image", "1.0", "2026.12.02+b1", "v1_rc-2"):
        assert rules.name_problem("version", good) is None, good
    for bad in ("", "../x", "a/b", "..", "1..2", ".hidden", "-x", "a b", "é", "x" * 65, "a\n", "a\\b"):
        problem = rules.name_problem("version", bad)
        assert problem is not None and repr(bad) in problem, bad


@given(st.text(max_size=80))
def test_no_valid_file_name_can_leave_its_directory(name: str) -> None:
    if rules.file_name_problem(name) is None:
        assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
        assert name.isascii() and name.isprintable() and 1 <= len(name) <= 128


def test_files_need_exactly_one_kernel_unique_names_and_known_roles() -> None:
    k = ("vmlinuz", "kernel", "a" * 64)
    assert rules.files_problem([k, ("initrd.img", "initrd", "b" * 64)]) is None
    assert "exactly one kernel" in (rules.files_problem([("initrd.img", "initrd", "b" * 64)]) or "")
    assert "exactly one kernel" in (rules.files_problem([k, ("v2", "kernel", "b" * 64)]) or "")
    assert "twice" in (rules.files_problem([k, ("vmlinuz", "dtb", "b" * 64)]) or "")
    assert "role 'bios'" in (rules.files_problem([k, ("x", "bios", "b" * 64)]) or "")
    assert "sha256" in (rules.files_problem([("vmlinuz", "kernel", "A" * 64)]) or "")
    assert "'../etc'" in (rules.files_problem([("../etc", "kernel", "a" * 64)]) or "")


def test_a_cmdline_is_one_printable_line_of_bounded_length() -> None:
    assert rules.cmdline_problem("console=ttyS0 root=/dev/ram0 {node}") is None
    assert rules.cmdline_problem("a\nb") is not None
    assert rules.cmdline_problem("x" * 5000) is not None


# -- promotions and rollback ----------------------------------------------------------------------

Op = tuple[str, str]  # ("promote", version) or ("rollback", "")

ops = st.lists(
    st.one_of(VERSIONS.map(lambda v: ("promote", v)), st.just(("rollback", ""))),
    max_size=30,
)


def apply(ops_: list[Op], exists: set[str]) -> tuple[list[PromotionRecord], list[str | None]]:
    """Run ``ops_`` through the rules; the current version after each op."""
    history: list[PromotionRecord] = []
    seen: list[str | None] = []
    for i, (op, version) in enumerate(ops_):
        if op == "promote":
            history.append(rules.promote(history, "g", "amd64", "node", version, float(i)))
        else:
            decided = rules.rollback(history, lambda _image, v: v in exists, float(i))
            if decided is not None:
                target, changed = decided
                by_seq = {c.seq: c for c in changed}
                history = [by_seq.get(e.seq, e) for e in history]
                assert rules.current(history) == target
        cur = rules.current(history)
        seen.append(cur.version if cur else None)
    return history, seen


@given(ops)
def test_rollback_behaves_like_a_stack_of_promotions(ops_: list[Op]) -> None:
    # The model: a stack; promote pushes; rollback pops the top and every entry equal to it
    # beneath, if something different remains (else nothing changes).
    stack: list[str] = []
    expected: list[str | None] = []
    for op, version in ops_:
        if op == "promote":
            stack.append(version)
        elif stack:
            top = stack[-1]
            rest = list(stack)
            while rest and rest[-1] == top:
                rest.pop()
            if rest:
                stack = rest
        expected.append(stack[-1] if stack else None)
    assert apply(ops_, {"1", "2", "3", "4"})[1] == expected


@given(ops, st.sets(VERSIONS))
def test_rollback_never_lands_on_a_removed_version_nor_on_the_same_one(
    ops_: list[Op], exists: set[str]
) -> None:
    history: list[PromotionRecord] = []
    for i, (op, version) in enumerate(ops_):
        if op == "promote":
            history.append(rules.promote(history, "g", "amd64", "node", version, float(i)))
            continue
        before = rules.current(history)
        decided = rules.rollback(history, lambda _image, v: v in exists, float(i))
        if decided is None:
            continue
        target, changed = decided
        assert before is not None and target.version in exists and target.version != before.version
        assert target.seq < before.seq
        assert all(c.rolled_back_at == float(i) and c.seq > target.seq for c in changed)
        by_seq = {c.seq: c for c in changed}
        history = [by_seq.get(e.seq, e) for e in history]


@given(st.lists(VERSIONS, min_size=1, max_size=10), VERSIONS)
def test_promote_then_rollback_restores_what_was_current(versions: list[str], new: str) -> None:
    history: list[PromotionRecord] = []
    for i, v in enumerate(versions):
        history.append(rules.promote(history, "g", "amd64", "node", v, float(i)))
    before = rules.current(history)
    assert before is not None
    history.append(rules.promote(history, "g", "amd64", "node", new, 99.0))
    decided = rules.rollback(history, lambda _i, _v: True, 100.0)
    if new == before.version:
        # promoting the current version again: a rollback goes past both to an older version
        assert decided is None or decided[0].version != new
    else:
        assert decided is not None and decided[0] == before


def test_nothing_to_roll_back_to_is_none() -> None:
    assert rules.rollback([], lambda _i, _v: True, 1.0) is None
    one = [rules.promote([], "g", "amd64", "node", "1", 0.0)]
    assert rules.rollback(one, lambda _i, _v: True, 1.0) is None
    two = [*one, rules.promote(one, "g", "amd64", "node", "2", 1.0)]
    assert rules.rollback(two, lambda _i, v: v != "1", 2.0) is None  # 1 was removed


# -- resolve ------------------------------------------------------------------------------------


def test_resolve_prefers_the_override_then_the_group_then_default() -> None:
    images = {(i.name, i.arch, i.version): i for i in (img("1"), img("2"), img("3"), img("1", arch="arm64"))}
    history = {
        ("default", "amd64"): [rules.promote([], "default", "amd64", "node", "1", 0.0)],
        ("default", "arm64"): [rules.promote([], "default", "arm64", "node", "1", 0.0)],
        ("canary", "amd64"): [rules.promote([], "canary", "amd64", "node", "2", 0.0)],
    }
    overrides = {"n9": OverrideRecord(node="n9", image="node", version="3", at=0.0)}

    def version(node: str, arch: str, group: str) -> str | None:
        found = rules.resolve(images, history, overrides, node, arch, group)
        return None if found is None else f"{found.version}/{found.arch}"

    assert version("n1", "amd64", "default") == "1/amd64"
    assert version("n1", "amd64", "canary") == "2/amd64"
    assert version("n1", "amd64", "nobody") == "1/amd64"  # a group with nothing promoted: default's
    assert version("n1", "arm64", "canary") == "1/arm64"  # canary has no arm64 promotion
    assert version("n9", "amd64", "canary") == "3/amd64"
    assert version("n9", "arm64", "default") is None  # the override has no arm64 build: not ignored
    assert version("n1", "riscv64", "default") is None


# -- removal and garbage ------------------------------------------------------------------------


def test_removal_is_refused_while_promoted_or_overridden_but_not_for_history() -> None:
    h = [rules.promote([], "g", "amd64", "node", "1", 0.0)]
    h.append(rules.promote(h, "g", "amd64", "node", "2", 1.0))
    history = {("g", "amd64"): h}
    assert "promoted to group g" in (rules.removal_problem(("node", "amd64", "2"), history, {}) or "")
    assert rules.removal_problem(("node", "amd64", "1"), history, {}) is None  # only in the history
    assert rules.removal_problem(("node", "arm64", "2"), history, {}) is None
    overrides = {"n1": OverrideRecord(node="n1", image="node", version="1", at=0.0)}
    assert "override of node n1" in (rules.removal_problem(("node", "amd64", "1"), history, overrides) or "")


@given(
    st.lists(st.tuples(VERSIONS, st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4)), max_size=6),
    st.data(),
)
def test_orphaned_blobs_are_exactly_those_only_removed_versions_used(
    builds: list[tuple[str, list[str]]], data: st.DataObject
) -> None:
    images = [img(v, name=f"i{n}", digests=tuple(c * 64 for c in ds)) for n, (v, ds) in enumerate(builds)]
    removed = data.draw(st.lists(st.sampled_from(images), unique_by=id) if images else st.just([]))
    remaining = [i for i in images if all(i is not r for r in removed)]
    orphans = rules.orphaned_blobs(removed, remaining)
    used_after = {f.digest for i in remaining for f in i.files}
    assert not (orphans & used_after)  # nothing still used is ever deleted
    assert orphans == {f.digest for i in removed for f in i.files} - used_after


def test_garbage_is_unreferenced_and_older_than_the_grace() -> None:
    on_disk = {"a": 0.0, "b": 0.0, "c": 950.0}
    assert rules.garbage(on_disk, {"a"}, now=1000.0, grace=100.0) == {"b"}
