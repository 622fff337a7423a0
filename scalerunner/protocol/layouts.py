# The one source of truth for the framed serial protocol's wire layouts.
#
# Both codecs read this file: the CPython codec (scalerunner.protocol.messages,
# built on construct) and the MicroPython codec (scalerunner/protocol/mpy/srp.py,
# plain struct) which is deployed to the RP2040 next to a copy of this file.
# It must therefore stay plain data that MicroPython can import: no imports,
# no annotations that need typing, no f-strings, nothing but ints, strs and tuples.
# docs/protocol.md is the prose reference for everything defined here.

PROTOCOL_VERSION = 1

# Header: version, type, seq, ack, flags, length (all u8), then `length` body
# bytes, then CRC-32 (IEEE, as zlib.crc32 / binascii.crc32) of header+body,
# little-endian. The whole is COBS-encoded and followed by one 0x00.
HEADER_FMT = "<BBBBBB"
HEADER_SIZE = 6
CRC_SIZE = 4
MAX_BODY = 255
MAX_FRAME = HEADER_SIZE + MAX_BODY + CRC_SIZE  # 265 bytes before COBS
# COBS adds one byte per started run of 254 non-zero bytes: at most 2 here.
MAX_ENCODED = MAX_FRAME + 2

# Header flags (bit values).
FLAG_ACKREQ = 0x01  # reliable frame: the receiver acknowledges its seq
FLAG_ACK = 0x02  # the ack field is valid (cumulative: last in-order seq received)
FLAG_SYN = 0x04  # first reliable frame of the sender's session: resets the receiver
FLAG_NAK = 0x08  # receiver saw a gap after `ack`: resend from ack+1 now
FLAG_RST = 0x10  # receiver is not synchronised: sender must resend with SYN
FLAGS_KNOWN = 0x1F

# Message types: (name, type id, fixed fields, tail field, tail kind).
# A fixed field is (name, struct format char). The tail, if any, takes the rest
# of the body: kind "bytes" (raw) or "str" (UTF-8 text).
MESSAGES = (
    ("ACK", 0x00, (), None, None),
    (
        "HELLO",
        0x01,
        (("kind", "B"), ("proto", "B"), ("fw_major", "B"), ("fw_minor", "B"), ("fw_patch", "B")),
        "uid",
        "bytes",
    ),
    ("PING", 0x02, (("token", "I"),), None, None),
    ("PONG", 0x03, (("token", "I"), ("uptime_ms", "I")), None, None),
    (
        "LED_SET",
        0x10,
        (("mode", "B"), ("r", "B"), ("g", "B"), ("b", "B"), ("brightness", "B"), ("period_ms", "H")),
        None,
        None,
    ),
    ("LED_GAUGE", 0x11, (("load_pct", "B"), ("temp_dc", "h")), None, None),
    ("POWER", 0x20, (("action", "B"),), None, None),
    ("BOOT_MODE", 0x23, (("mode", "B"),), None, None),
    ("STATUS_GET", 0x21, (), None, None),
    (
        "STATUS",
        0x22,
        (("power_state", "B"), ("rail_mv", "H"), ("current_ma", "H"), ("power_mw", "I"), ("temp_dc", "h")),
        None,
        None,
    ),
    ("CONSOLE_DATA", 0x30, (("port", "B"),), "data", "bytes"),
    ("EVENT", 0x40, (("level", "B"), ("code", "H"), ("time_ms", "I")), "text", "str"),
    ("EVENT_LOG_GET", 0x41, (("since", "H"),), None, None),
    (
        "EVENT_LOG",
        0x42,
        (("index", "H"), ("next", "H"), ("level", "B"), ("code", "H"), ("time_ms", "I")),
        "text",
        "str",
    ),
    ("ERROR", 0x7F, (("code", "B"), ("ref_type", "B"), ("ref_seq", "B")), "text", "str"),
)

# Enumerated field values: (enum name, ((member, value), ...)).
ENUMS = (
    ("DeviceKind", (("HOST", 0), ("LED", 1), ("BMC", 2))),
    (
        "LedMode",
        (("OFF", 0), ("SOLID", 1), ("BLINK", 2), ("BREATHE", 3), ("GAUGE", 4), ("IDENTIFY", 5), ("ALERT", 6)),
    ),
    ("PowerAction", (("OFF", 0), ("ON", 1), ("CYCLE", 2), ("RESET", 3), ("BUTTON", 4), ("BUTTON_LONG", 5))),
    ("BootMode", (("NORMAL", 0), ("NETWORK", 1), ("USB", 2), ("RECOVERY", 3))),
    ("PowerState", (("OFF", 0), ("ON", 1), ("STARTING", 2), ("STOPPING", 3), ("FAULT", 4))),
    ("EventLevel", (("DEBUG", 0), ("INFO", 1), ("WARNING", 2), ("ERROR", 3))),
    (
        "ErrorCode",
        (
            ("UNKNOWN_TYPE", 1),
            ("BAD_BODY", 2),
            ("BAD_VALUE", 3),
            ("BUSY", 4),
            ("UNSUPPORTED", 5),
            ("INTERNAL", 6),
        ),
    ),
)
