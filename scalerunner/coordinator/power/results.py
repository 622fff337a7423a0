"""The result of a power action over many nodes: one line per node, ok or its error (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .base import OutletStatus, PowerError

__all__ = ["NodeResult", "exit_code", "shape"]


@dataclass(frozen=True, slots=True)
class NodeResult:
    node: str
    ok: bool
    outlet: str = ""
    state: str = ""  # the outlet's state afterwards, where it was read
    watts: float | None = None
    cause: str = ""  # a PowerError cause when not ok ("timeout", "not-assigned", ...)
    message: str = ""


def shape(
    nodes: Sequence[str], outcomes: Mapping[str, OutletStatus | BaseException], outlets: Mapping[str, str]
) -> list[NodeResult]:
    """One result per node, in the order asked. A node with no outcome was not carried out
    (say so rather than drop it); an exception that is not a PowerError is reported as is."""
    out: list[NodeResult] = []
    for node in nodes:
        outlet = outlets.get(node, "")
        got = outcomes.get(node)
        if isinstance(got, OutletStatus):
            out.append(
                NodeResult(
                    node, True, got.outlet, got.state.value, got.watts, "", got.detail or got.state.value
                )
            )
        elif isinstance(got, PowerError):
            out.append(NodeResult(node, False, got.outlet or outlet, cause=got.cause, message=str(got)))
        elif got is None:
            out.append(NodeResult(node, False, outlet, cause="not-run", message=f"{node}: not carried out"))
        else:
            out.append(NodeResult(node, False, outlet, cause="error", message=f"{node}: {got}"))
    return out


def exit_code(results: Sequence[NodeResult]) -> int:
    """0 when every node succeeded, 1 when any failed (the CLI's convention for a bulk action)."""
    return 0 if all(r.ok for r in results) else 1
