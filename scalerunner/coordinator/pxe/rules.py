"""The image registry's decisions, as plain functions over plain data (no I/O, no clock).

What a valid name is; which image a node boots; what a rollback goes back to; whether a
version may be removed and which blobs go with it; which stray blobs are garbage. The
registry (``registry``) holds the state and the lock, and only carries these decisions out.

Promotion history: each (group, arch) has numbered entries, each an image version promoted at a
time. The current promotion is the latest entry not rolled back. A rollback marks the current
entry (and any entry it skips) rolled back, so the one before becomes current again; a second
rollback goes one further back. Promoting appends an entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from ...protocol.mqtt.topics import NAME_RE
from ..store.base import ImageRecord, OverrideRecord, PromotionRecord
from .base import ROLES

__all__ = [
    "ARCHES",
    "DEFAULT_GROUP",
    "ImageKey",
    "boots",
    "changed_boots",
    "cmdline_problem",
    "current",
    "digest_problem",
    "file_name_problem",
    "files_problem",
    "garbage",
    "group_problem",
    "name_problem",
    "orphaned_blobs",
    "promote",
    "removal_problem",
    "resolve",
    "rollback",
]

ARCHES = ("amd64", "arm64", "riscv64")  # the inventory's node arches
DEFAULT_GROUP = "default"  # every node's boot_group unless the inventory says otherwise
MAX_CMDLINE = 4096  # Linux's COMMAND_LINE_SIZE on arm64 and x86 (the boot server appends to it)

ImageKey = tuple[str, str, str]  # (name, arch, version)

# Names and versions become URL path segments and file names: a sane charset, no '/', no '..'.
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
_FILE = re.compile(r"\A[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}\Z")
_DIGEST = re.compile(r"\A[0-9a-f]{64}\Z")


def name_problem(what: str, value: str) -> str | None:
    """Why ``value`` is not a valid image name or version (``what`` says which), or None."""
    if not _NAME.match(value) or ".." in value:
        return (
            f"{what} {value!r} must be 1-64 of A-Z, a-z, 0-9 and . _ + -, starting with a letter "
            "or digit, without '..'"
        )
    return None


def group_problem(group: str) -> str | None:
    """Groups are the inventory's ``boot_group`` values, which follow the node name rule."""
    if not NAME_RE.match(group):
        return f"group {group!r} must be 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
    return None


def arch_problem(arch: str) -> str | None:
    return None if arch in ARCHES else f"arch {arch!r} must be one of {', '.join(ARCHES)}"


def file_name_problem(name: str) -> str | None:
    """A file's name as a node asks for it: no '/', no '..', not hidden."""
    if not _FILE.match(name) or ".." in name:
        return (
            f"file name {name!r} must be 1-128 of A-Z, a-z, 0-9 and . _ + -, not starting with "
            "'.', without '/' or '..'"
        )
    return None


def digest_problem(digest: str) -> str | None:
    return None if _DIGEST.match(digest) else f"digest {digest!r} must be 64 lower-case hex digits (sha256)"


def cmdline_problem(cmdline: str) -> str | None:
    if len(cmdline) > MAX_CMDLINE:
        return f"cmdline is {len(cmdline)} characters, more than {MAX_CMDLINE}"
    if any(not c.isprintable() for c in cmdline):
        return "cmdline must be one line of printable characters"
    return None


def files_problem(files: Sequence[tuple[str, str, str]]) -> str | None:
    """``files`` as (name, role, digest): each valid, names unique, exactly one kernel."""
    seen: set[str] = set()
    for name, role, digest in files:
        problem = file_name_problem(name) or digest_problem(digest)
        if problem:
            return problem
        if role not in ROLES:
            return f"file {name!r}: role {role!r} must be one of {', '.join(ROLES)}"
        if name in seen:
            return f"file name {name!r} is given twice"
        seen.add(name)
    kernels = [name for name, role, _ in files if role == "kernel"]
    if len(kernels) != 1:
        return f"an image has exactly one kernel file, not {len(kernels)}"
    return None


# -- promotions ---------------------------------------------------------------------------------


def current(history: Sequence[PromotionRecord]) -> PromotionRecord | None:
    """The entry in force: the latest one not rolled back."""
    for entry in reversed(history):
        if entry.rolled_back_at is None:
            return entry
    return None


def promote(
    history: Sequence[PromotionRecord], group: str, arch: str, image: str, version: str, at: float
) -> PromotionRecord:
    """The new entry that makes ``image`` ``version`` current for (group, arch)."""
    seq = max((e.seq for e in history), default=0) + 1
    return PromotionRecord(group=group, arch=arch, seq=seq, image=image, version=version, at=at)


def rollback(
    history: Sequence[PromotionRecord], exists: Callable[[str, str], bool], at: float
) -> tuple[PromotionRecord, list[PromotionRecord]] | None:
    """Undo the current promotion: (the entry that becomes current, the entries marked rolled
    back at ``at``), or None if there is nothing to go back to. The target is the latest earlier
    entry not rolled back whose version still ``exists(image, version)`` and differs from the
    current one; the entries passed over on the way are marked too, so they never come back."""
    ordered = sorted(history, key=lambda e: e.seq)
    now = current(ordered)
    if now is None:
        return None
    live = [e for e in ordered if e.rolled_back_at is None and e.seq <= now.seq]
    for i in range(len(live) - 2, -1, -1):
        entry = live[i]
        if (entry.image, entry.version) != (now.image, now.version) and exists(entry.image, entry.version):
            return entry, [replace(e, rolled_back_at=at) for e in live[i + 1 :]]
    return None


def resolve(
    images: Mapping[ImageKey, ImageRecord],
    history: Mapping[tuple[str, str], Sequence[PromotionRecord]],
    overrides: Mapping[str, OverrideRecord],
    node: str,
    arch: str,
    group: str,
) -> ImageRecord | None:
    """The image ``node`` boots: its override (None if that version lacks the node's arch: an
    override is never silently ignored), else the version current for (group, arch), else the
    one current for ("default", arch)."""
    override = overrides.get(node)
    if override is not None:
        return images.get((override.image, arch, override.version))
    for g in (group, DEFAULT_GROUP):
        entry = current(history.get((g, arch), ()))
        if entry is not None:
            return images.get((entry.image, arch, entry.version))
    return None


def boots(
    images: Mapping[ImageKey, ImageRecord],
    history: Mapping[tuple[str, str], Sequence[PromotionRecord]],
    overrides: Mapping[str, OverrideRecord],
    nodes: Mapping[str, tuple[str, str]],
) -> dict[str, ImageKey | None]:
    """What each node (name -> (arch, group)) boots next, as an image key or None."""
    out: dict[str, ImageKey | None] = {}
    for node, (arch, group) in nodes.items():
        found = resolve(images, history, overrides, node, arch, group)
        out[node] = None if found is None else (found.name, found.arch, found.version)
    return out


def changed_boots(
    before: Mapping[str, ImageKey | None], after: Mapping[str, ImageKey | None]
) -> list[tuple[str, ImageKey | None, ImageKey | None]]:
    """(node, old, new) for each node whose next boot changed, by node."""
    return [(n, before.get(n), after.get(n)) for n in sorted(after) if before.get(n) != after.get(n)]


# -- removal and garbage ----------------------------------------------------------------------


def removal_problem(
    key: ImageKey,
    history: Mapping[tuple[str, str], Sequence[PromotionRecord]],
    overrides: Mapping[str, OverrideRecord],
) -> str | None:
    """Why image version ``key`` may not be removed now (promoted somewhere, or some node's
    override), or None. Only entries in force count: history alone does not keep a version."""
    name, arch, version = key
    groups = sorted(
        g
        for (g, a), entries in history.items()
        if a == arch and (e := current(entries)) is not None and (e.image, e.version) == (name, version)
    )
    if groups:
        return (
            f"image {name} {version} ({arch}) is promoted to group {', '.join(groups)}; "
            "promote another version or roll back first"
        )
    nodes = sorted(n for n, o in overrides.items() if (o.image, o.version) == (name, version))
    if nodes:
        return f"image {name} {version} is the override of node {', '.join(nodes)}; clear it first"
    return None


def orphaned_blobs(removed: Iterable[ImageRecord], remaining: Iterable[ImageRecord]) -> set[str]:
    """The digests of ``removed`` that no image in ``remaining`` uses."""
    kept = {f.digest for i in remaining for f in i.files}
    return {f.digest for i in removed for f in i.files} - kept


def garbage(on_disk: Mapping[str, float], referenced: set[str], now: float, grace: float) -> set[str]:
    """Blobs (digest -> mtime) that no image uses and that are older than ``grace`` seconds:
    a younger one may be an upload whose image version has not been created yet."""
    return {d for d, mtime in on_disk.items() if d not in referenced and now - mtime > grace}
