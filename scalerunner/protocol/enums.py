"""Typed views of the constants in ``layouts`` (a test keeps the two equal)."""

from __future__ import annotations

import enum


class MsgType(enum.IntEnum):
    ACK = 0x00
    HELLO = 0x01
    PING = 0x02
    PONG = 0x03
    LED_SET = 0x10
    LED_GAUGE = 0x11
    POWER = 0x20
    STATUS_GET = 0x21
    BOOT_MODE = 0x23
    STATUS = 0x22
    CONSOLE_DATA = 0x30
    EVENT = 0x40
    EVENT_LOG_GET = 0x41
    EVENT_LOG = 0x42
    ERROR = 0x7F


class Flags(enum.IntFlag):
    ACKREQ = 0x01
    ACK = 0x02
    SYN = 0x04
    NAK = 0x08
    RST = 0x10


class DeviceKind(enum.IntEnum):
    HOST = 0
    LED = 1
    BMC = 2


class LedMode(enum.IntEnum):
    OFF = 0
    SOLID = 1
    BLINK = 2
    BREATHE = 3
    GAUGE = 4
    IDENTIFY = 5
    ALERT = 6


class PowerAction(enum.IntEnum):
    OFF = 0
    ON = 1
    CYCLE = 2
    RESET = 3
    BUTTON = 4
    BUTTON_LONG = 5


class BootMode(enum.IntEnum):
    NORMAL = 0
    NETWORK = 1
    USB = 2
    RECOVERY = 3


class PowerState(enum.IntEnum):
    OFF = 0
    ON = 1
    STARTING = 2
    STOPPING = 3
    FAULT = 4


class EventLevel(enum.IntEnum):
    DEBUG = 0
    INFO = 1
    WARNING = 2
    ERROR = 3


class ErrorCode(enum.IntEnum):
    UNKNOWN_TYPE = 1
    BAD_BODY = 2
    BAD_VALUE = 3
    BUSY = 4
    UNSUPPORTED = 5
    INTERNAL = 6


# Which enum, if any, gives meaning to a field; used to print decoded traces.
FIELD_ENUMS: dict[tuple[str, str], type[enum.IntEnum]] = {
    ("HELLO", "kind"): DeviceKind,
    ("LED_SET", "mode"): LedMode,
    ("POWER", "action"): PowerAction,
    ("BOOT_MODE", "mode"): BootMode,
    ("STATUS", "power_state"): PowerState,
    ("EVENT", "level"): EventLevel,
    ("EVENT_LOG", "level"): EventLevel,
    ("ERROR", "code"): ErrorCode,
    ("ERROR", "ref_type"): MsgType,
}
