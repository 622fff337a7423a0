"""The REST API's documented objects (they are also the CLI's --json output)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

HealthName = Literal["good", "unknown", "bad", "maintenance", "retired"]


class RackPosition(BaseModel):
    row: int
    position: int


class TelemetryView(BaseModel):
    ts: float
    load1: float
    cpu_pct: float
    mem_used_mb: int
    mem_total_mb: int
    temp_c: float | None = None
    age_s: float = Field(description="seconds since the telemetry arrived")


class NodeView(BaseModel):
    name: str
    state: str = Field(
        description="lifecycle state: off, booting, online, idle, busy, draining, offline, failed"
    )
    health: HealthName
    health_reason: str = ""
    arch: str
    labels: list[str] = []
    mac: str
    switch: str | None = None
    port: int | None = None
    rack: RackPosition | None = None
    state_since: float = 0.0
    conn_seq: int = 0
    telemetry: TelemetryView | None = None


class EventView(BaseModel):
    id: int
    at: float
    node: str
    axis: str = Field(description="what changed: state, health, or command")
    old: str
    new: str
    reason: str


class HealthChange(BaseModel):
    health: HealthName
    reason: str = Field(min_length=1, max_length=500, description="why; recorded in the node's events")

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, reason: str) -> str:
        if not reason.strip():
            raise ValueError("a health change needs a reason, not only blanks")
        return reason


class DrainRequest(BaseModel):
    reason: str = Field(default="operator request", max_length=500)


class CommandResult(BaseModel):
    node: str
    ok: bool
    detail: str = ""


class ErrorBody(BaseModel):
    error: str
    node: str | None = None


class PowerRequest(BaseModel):
    nodes: list[str] = Field(min_length=1, max_length=4096, description="the nodes to act on")
    reason: str = Field(default="operator request", max_length=500)


class PowerResult(BaseModel):
    """One node's outcome of a power action or status read."""

    node: str
    ok: bool
    outlet: str = Field(default="", description='the switch port ("sw1:7") or BMC ("bmc:/dev/ttyACM0")')
    state: str = Field(default="", description="on, off, searching, fault or unknown (when ok)")
    watts: float | None = None
    cause: str = Field(
        default="", description="why it failed: timeout, fault, not-assigned, refused, unknown-node, ..."
    )
    message: str = ""


class EnergyView(BaseModel):
    node: str
    since: float
    until: float
    wh: float = Field(description="watt-hours drawn within the window")
    covered_s: float = Field(description="seconds of the window that power samples cover")
    samples: int
    mean_w: float | None = None
    job: str = ""
    attempt: int = 0
