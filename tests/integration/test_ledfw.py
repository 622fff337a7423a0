"""The LED firmware (ledfw/) under the real MicroPython unix port.

- ledfw/render.py through ledfw/tests_driver.py: the exact pixel bytes of every mode at given times, the
  gamma table and the brightness cap (fast: one micropython run per test).
- ledfw/main.py running unchanged on a pty, driven from the host through
  ``scalerunner.protocol.link.Link`` (``slow``: one firmware process per test, always stopped).

The state is observed through the protocol: STATUS_GET is answered with an EVENT (code 0x0110) whose text
is ``mode=NAME lost=N px=HEX``, the pixel buffer last written to the LEDs (3 bytes per pixel, R G B).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import textwrap
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scalerunner.firmware import ledboard_source, micropypath
from scalerunner.protocol import DeviceKind, ErrorCode, EventLevel, Frame, Message, MsgType, encode_frame
from scalerunner.protocol.link import Link
from scalerunner.protocol.link.streams import FdStream
from tests.mpy_support import micropython_binary, require_tool

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "ledfw" / "main.py"
DRIVER = REPO / "ledfw" / "tests_driver.py"
MICROPYPATH = micropypath(REPO / "ledfw")
STEP = 5.0  # seconds any single exchange may take
HOST_TIMEOUT_MS = 600
EV_STATE, EV_HOST_LOST, EV_HOST_BACK, EV_DROPS = 0x0110, 0x0111, 0x0112, 0x0200
N = 8
CAP = 102  # full channel at full brightness: 40 % of 255


@dataclass
class Device:
    proc: subprocess.Popen[bytes]
    master: int
    path: str

    master_open: bool = True

    def stream(self) -> FdStream:
        return FdStream(os.dup(self.master), f"pty:{self.path}")

    def hang_up(self) -> None:
        if self.master_open:
            self.master_open = False
            os.close(self.master)


@pytest.fixture
def device() -> Iterator[Device]:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    proc = subprocess.Popen(
        [micropython_binary(), str(MAIN), path, str(HOST_TIMEOUT_MS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MICROPYPATH": MICROPYPATH},
    )
    dev = Device(proc, master, path)
    try:
        yield dev
    finally:
        dev.hang_up()
        try:
            proc.communicate(timeout=STEP)  # it exits by itself when the line closes
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        os.close(slave)


async def recv_type(link: Link, msg_type: MsgType, code: int | None = None) -> Message:
    async with asyncio.timeout(STEP):
        while True:
            msg = await link.recv()
            if msg.type == msg_type and (code is None or msg["code"] == code):
                return msg


def parse_state(text: str) -> tuple[str, int, bytes]:
    m = re.fullmatch(r"mode=(\w+) lost=(\d+) px=([0-9a-f]*)", text)
    assert m, text
    return m[1], int(m[2]), bytes.fromhex(m[3])


async def state(link: Link) -> tuple[str, int, bytes]:
    await link.send(Message.make("STATUS_GET"))
    return parse_state(str((await recv_type(link, MsgType.EVENT, EV_STATE))["text"]))


async def wait_mode(link: Link, mode: str) -> bytes:
    """Ask until the firmware shows `mode` (the boot self-test comes first); its pixels."""
    deadline = time.monotonic() + STEP
    while True:
        shown, _, px = await state(link)
        if shown == mode:
            return px
        assert time.monotonic() < deadline, f"still {shown}, waiting for {mode}"
        await asyncio.sleep(0.05)


async def led_set(
    link: Link, mode: int, rgb: tuple[int, int, int] = (0, 0, 0), bri: int = 255, period: int = 0
) -> None:
    r, g, b = rgb
    await link.send(Message.make("LED_SET", mode=mode, r=r, g=g, b=b, brightness=bri, period_ms=period))


def pixels(rgb: tuple[int, int, int], n: int = N) -> bytes:
    return bytes(rgb) * n


@pytest.mark.slow
def test_hello_says_led_and_every_mode_shows_in_the_pixels(device: Device) -> None:
    async def scenario() -> None:
        async with Link(device.stream()) as link:
            hello = await recv_type(link, MsgType.HELLO)
            assert (hello["kind"], hello["proto"]) == (DeviceKind.LED, 1)
            assert (hello["fw_major"], hello["fw_minor"], hello["fw_patch"]) == (0, 1, 0)
            assert hello["uid"] == b"ledfw-ux"
            assert await wait_mode(link, "OFF") == pixels((0, 0, 0))
            await led_set(link, 1, (255, 0, 0))
            assert await wait_mode(link, "SOLID") == pixels((CAP, 0, 0))
            await led_set(link, 1, (0, 255, 255), bri=128)  # gamma 2: 128 -> 65, capped -> 26
            assert await wait_mode(link, "SOLID") == pixels((0, 26, 26))
            await led_set(link, 2, (0, 0, 255), period=400)
            seen = set()
            for _ in range(12):
                assert (await state(link))[0] == "BLINK"
                seen.add((await state(link))[2])
                await asyncio.sleep(0.04)
            assert seen == {pixels((0, 0, CAP)), pixels((0, 0, 0))}
            await led_set(link, 3, (255, 255, 255), period=2000)
            px = await wait_mode(link, "BREATHE")
            assert len(set(px)) == 1 and px[0] <= CAP  # all channels alike, below the cap
            await link.send(Message.make("LED_GAUGE", load_pct=30, temp_dc=650))
            await led_set(link, 4)
            assert await wait_mode(link, "GAUGE") == pixels((CAP, CAP, 0), 3) + pixels((0, 0, 0), 5)
            await link.send(Message.make("LED_GAUGE", load_pct=100, temp_dc=812))
            assert await wait_mode(link, "GAUGE") == pixels((CAP, 0, 0))
            await link.send(Message.make("LED_GAUGE", load_pct=0, temp_dc=-50))
            assert await wait_mode(link, "GAUGE") == pixels((0, 0, 0))
            await led_set(link, 5)
            px = await wait_mode(link, "IDENTIFY")
            assert px in (pixels((CAP, CAP, CAP)), pixels((0, 0, 0)))
            await led_set(link, 6)
            px = await wait_mode(link, "ALERT")
            assert px in (pixels((CAP, 0, 0), 1) + pixels((0, 0, 0), 1)) * 4, (
                pixels((0, 0, 0), 1) + pixels((CAP, 0, 0), 1)
            ) * 4
            await led_set(link, 0, (9, 9, 9))
            assert await wait_mode(link, "OFF") == pixels((0, 0, 0))

    asyncio.run(scenario())


@pytest.mark.slow
def test_host_lost_pattern_after_the_timeout_and_recovery_on_the_next_frame(device: Device) -> None:
    async def scenario() -> None:
        async with Link(device.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            await led_set(link, 1, (0, 255, 0))
            assert await wait_mode(link, "SOLID") == pixels((0, CAP, 0))
            t0 = time.monotonic()
            lost = await recv_type(link, MsgType.EVENT, EV_HOST_LOST)  # the host said nothing since
            assert time.monotonic() - t0 >= HOST_TIMEOUT_MS / 1000 * 0.8
            assert lost["level"] == EventLevel.WARNING
            mode, count, px = parse_state(str(lost["text"]))
            # one amber pixel (255, 96 after gamma 2 and the cap: 102, 14) at the start of its walk
            assert (mode, count, px) == ("HOST_LOST", 1, bytes((CAP, 14, 0)) + pixels((0, 0, 0), N - 1))
            await asyncio.sleep(0.3)  # silent a while longer
            await link.send(Message.make("STATUS_GET"))  # the first frame for a while: the host is back
            back = await recv_type(link, MsgType.EVENT, EV_HOST_BACK)
            assert parse_state(str(back["text"])) == ("SOLID", 1, pixels((0, CAP, 0)))
            answer = await recv_type(link, MsgType.EVENT, EV_STATE)
            assert parse_state(str(answer["text"])) == ("SOLID", 1, pixels((0, CAP, 0)))
            await link.send(Message.make("PING", token=5))
            assert (await recv_type(link, MsgType.PONG))["token"] == 5

    asyncio.run(scenario())


@pytest.mark.slow
def test_garbage_on_the_line_is_counted_reported_and_survived(device: Device) -> None:
    async def scenario() -> None:
        async with Link(device.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            good = encode_frame(Message.make("PING", token=1).to_frame(seq=9, flags=1))
            bad_crc = bytearray(good)
            bad_crc[5] ^= 0x40
            for chunk in (b"\x00garbage\x00", b"\x07" * 300 + b"\x00", bytes(bad_crc), b"\x02\x01\x00"):
                os.write(device.master, chunk)
            os.write(device.master, encode_frame(Frame(type=0x55, body=b"?")))  # intact, unknown type
            error = await recv_type(link, MsgType.ERROR)
            assert (error["code"], error["ref_type"]) == (ErrorCode.UNKNOWN_TYPE, 0x55)
            reported: dict[str, int] = {}
            while not {"cobs", "oversize", "crc", "short", "unknown_type"} <= reported.keys():
                report = await recv_type(link, MsgType.EVENT, EV_DROPS)
                assert report["level"] == EventLevel.WARNING
                reported = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", str(report["text"]))}
            assert (
                reported["oversize"] == reported["crc"] == reported["short"] == reported["unknown_type"] == 1
            )
            await led_set(link, 1, (0, 0, 255))
            assert await wait_mode(link, "SOLID") == pixels((0, 0, CAP))
        device.hang_up()
        out, _ = device.proc.communicate(timeout=STEP)
        assert device.proc.returncode == 0, out
        assert b"ledfw: line closed" in out and b"crc=1" in out

    asyncio.run(scenario())


@pytest.mark.slow
def test_out_of_range_values_get_bad_value_and_change_nothing(device: Device) -> None:
    async def scenario() -> None:
        async with Link(device.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            await link.send(Message.make("LED_GAUGE", load_pct=50, temp_dc=300))
            await led_set(link, 4)
            want = pixels((0, CAP, 0), 4) + pixels((0, 0, 0), 4)
            assert await wait_mode(link, "GAUGE") == want
            bad = [
                Message.make("LED_SET", mode=7, r=1, g=2, b=3, brightness=4, period_ms=0),
                Message.make("LED_SET", mode=2, r=1, g=2, b=3, brightness=4, period_ms=10),
                Message.make("LED_GAUGE", load_pct=101, temp_dc=300),
                Message.make("LED_GAUGE", load_pct=10, temp_dc=1501),
                Message.make("LED_GAUGE", load_pct=10, temp_dc=-401),
            ]
            for msg in bad:
                await link.send(msg)
                error = await recv_type(link, MsgType.ERROR)
                assert (error["code"], error["ref_type"]) == (ErrorCode.BAD_VALUE, msg.type), msg
                assert str(error["text"]).startswith("bad value: ")
            await link.send(Message.make("POWER", action=1))
            error = await recv_type(link, MsgType.ERROR)
            assert (error["code"], error["ref_type"]) == (ErrorCode.UNSUPPORTED, MsgType.POWER)
            assert await state(link) == ("GAUGE", 0, want)

    asyncio.run(scenario())


# --- render.py: exact bytes -------------------------------------------------------------------

OFF, SOLID, BLINK, BREATHE, GAUGE, IDENTIFY, ALERT, HOST_LOST, SELFTEST = 0, 1, 2, 3, 4, 5, 6, 100, 101


def run_driver(*cases: str) -> list[bytes]:
    env = {**os.environ, "MICROPYPATH": MICROPYPATH}
    out = subprocess.run(
        [micropython_binary(), str(DRIVER), *cases],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
        check=True,
    ).stdout
    lines = out.split()
    assert len(lines) == len(cases), out
    return [bytes.fromhex(line) for line in lines]


def case(
    mode: int,
    t: int,
    rgb: tuple[int, int, int] = (0, 0, 0),
    bri: int = 255,
    period: int = 0,
    load: int = 0,
    temp: int = 0,
    n: int = 4,
) -> str:
    return ",".join(str(v) for v in (mode, t, *rgb, bri, period, load, temp, n))


def px(*rgb: tuple[int, int, int]) -> bytes:
    return b"".join(bytes(c) for c in rgb)


K = (0, 0, 0)

# (case, exact pixels): each row is one behaviour of one mode.
CASES = [
    # OFF is dark whatever colour was asked for
    (case(OFF, 123, (255, 255, 255)), px(K, K, K, K)),
    # SOLID: full channel -> the cap; 128 -> gamma 2 (65) -> capped (26); 1 -> gamma 1 -> capped 0
    (case(SOLID, 0, (255, 128, 1), n=2), px((CAP, 26, 0), (CAP, 26, 0))),
    # SOLID at brightness 128 scales before gamma: 255*128/255 = 128 -> 26
    (case(SOLID, 0, (255, 0, 0), bri=128, n=1), px((26, 0, 0))),
    # BLINK: default period 1000 ms, on for the first half
    (case(BLINK, 0, (0, 0, 255), n=2), px((0, 0, CAP), (0, 0, CAP))),
    (case(BLINK, 499, (0, 0, 255), n=2), px((0, 0, CAP), (0, 0, CAP))),
    (case(BLINK, 500, (0, 0, 255), n=2), px(K, K)),
    (case(BLINK, 1000, (0, 0, 255), n=2), px((0, 0, CAP), (0, 0, CAP))),
    (case(BLINK, 150, (0, 255, 0), period=200, n=1), px(K)),
    # BREATHE: triangle over 2000 ms: dark at 0, half way at 500 (127 -> 64 -> 25), full at 1000
    (case(BREATHE, 0, (255, 0, 0), n=1), px(K)),
    (case(BREATHE, 500, (255, 0, 0), n=1), px((25, 0, 0))),
    (case(BREATHE, 1000, (255, 0, 0), n=1), px((CAP, 0, 0))),
    (case(BREATHE, 1500, (255, 0, 0), n=1), px((25, 0, 0))),
    (case(BREATHE, 250, (255, 0, 0), period=1000, n=1), px((25, 0, 0))),
    # GAUGE: ceil(load * n / 100) pixels lit; green below 50.0 degC, yellow below 70.0, red from 70.0
    (case(GAUGE, 0, load=30, temp=499, n=8), px((0, CAP, 0), (0, CAP, 0), (0, CAP, 0), K, K, K, K, K)),
    (case(GAUGE, 0, load=1, temp=500, n=4), px((CAP, CAP, 0), K, K, K)),
    (case(GAUGE, 0, load=50, temp=699, n=4), px((CAP, CAP, 0), (CAP, CAP, 0), K, K)),
    (case(GAUGE, 0, load=100, temp=700, n=4), px((CAP, 0, 0), (CAP, 0, 0), (CAP, 0, 0), (CAP, 0, 0))),
    (case(GAUGE, 0, load=0, temp=-100, n=4), px(K, K, K, K)),
    # IDENTIFY: white, 250 ms period, on for the first half
    (case(IDENTIFY, 0, n=2), px((CAP, CAP, CAP), (CAP, CAP, CAP))),
    (case(IDENTIFY, 125, n=2), px(K, K)),
    (case(IDENTIFY, 260, n=2), px((CAP, CAP, CAP), (CAP, CAP, CAP))),
    # ALERT: red wig-wag unless a colour is given: even pixels first half, odd pixels second half
    (case(ALERT, 0), px((CAP, 0, 0), K, (CAP, 0, 0), K)),
    (case(ALERT, 300), px(K, (CAP, 0, 0), K, (CAP, 0, 0))),
    (case(ALERT, 0, (0, 0, 255), period=1000, n=2), px((0, 0, CAP), K)),
    # HOST_LOST: one amber pixel (255, 96 -> 37 -> 14) walking one place every 125 ms
    (case(HOST_LOST, 0), px((CAP, 14, 0), K, K, K)),
    (case(HOST_LOST, 250), px(K, K, (CAP, 14, 0), K)),
    (case(HOST_LOST, 500), px((CAP, 14, 0), K, K, K)),
    # SELFTEST: one white pixel per 40 ms, then dark
    (case(SELFTEST, 0, n=2), px((CAP, CAP, CAP), K)),
    (case(SELFTEST, 40, n=2), px(K, (CAP, CAP, CAP))),
    (case(SELFTEST, 80, n=2), px(K, K)),
]


def test_every_mode_renders_the_exact_pixel_bytes_at_given_times() -> None:
    got = run_driver(*(c for c, _ in CASES))
    for (c, want), have in zip(CASES, got, strict=True):
        assert have == want, f"case {c}: {have.hex()} != {want.hex()}"


def test_gamma_table_is_integer_gamma_2_that_keeps_low_inputs_lit() -> None:
    (gamma,) = run_driver("gamma")
    assert gamma == bytes((x * x + 254) // 255 for x in range(256))
    assert gamma[0] == 0 and gamma[1] == 1 and gamma[255] == 255
    assert all(a <= b for a, b in itertools.pairwise(gamma))


def test_no_channel_exceeds_the_cap_in_any_mode() -> None:
    cases = [
        case(m, t, (255, 255, 255), load=100, n=8)
        for m in (1, 2, 3, 4, 5, 6, 100, 101)
        for t in (0, 500, 999)
    ]
    for c, have in zip(cases, run_driver(*cases), strict=True):
        assert len(have) == 24 and max(have) <= CAP, c
    assert max(run_driver(case(SOLID, 0, (255, 255, 255), n=8))[0]) == CAP


def test_rendering_allocates_nothing_in_any_mode() -> None:
    # The driver renders each case again with micropython.heap_lock(): an allocation would raise MemoryError.
    cases = [
        "lock," + case(m, t, rgb, period=p, load=60, temp=temp, n=8)
        for m in (OFF, SOLID, BLINK, BREATHE, GAUGE, IDENTIFY, ALERT, HOST_LOST, SELFTEST)
        for t, rgb, p, temp in (
            (0, (0, 0, 0), 0, 400),
            (777, (10, 200, 30), 400, 650),
            (1999, (255, 0, 9), 0, 900),
        )
    ]
    locked = run_driver(*cases)
    assert locked == run_driver(*(c.removeprefix("lock,") for c in cases))


def test_the_firmware_loop_allocates_nothing_once_running() -> None:
    # frame (render + HAL write), watchdog, drop report and an idle link poll, run again with the heap
    # locked on a fake HAL: BLINK red, period 400 ms, on at t=850.
    assert run_driver("fw") == [pixels((CAP, 0, 0))]


def wire(*host: Frame) -> bytes:
    """What the firmware writes (link seq 0x42, on a fake line) when the host's frames arrive at boot."""
    (out,) = run_driver("wire," + b"".join(encode_frame(f) for f in host).hex())
    return out


HELLO = Message.make("HELLO", kind=1, proto=1, fw_major=0, fw_minor=1, fw_patch=0, uid=b"drv")
ACKREQ, ACK, SYN = 0x01, 0x02, 0x04


def test_boot_writes_a_line_opener_and_a_reliable_hello_opening_the_session() -> None:
    assert wire() == b"\x00" + encode_frame(HELLO.to_frame(seq=0x42, flags=ACKREQ | SYN))


def test_a_bad_mode_is_answered_with_these_exact_error_bytes() -> None:
    bad = Message.make("LED_SET", mode=9, r=1, g=2, b=3, brightness=4, period_ms=0)
    error = Message.make(
        "ERROR", code=ErrorCode.BAD_VALUE, ref_type=MsgType.LED_SET, ref_seq=7, text="bad value: LED mode 9"
    )
    assert wire(bad.to_frame(seq=7, ack=0x42, flags=ACKREQ | ACK | SYN)) == (
        b"\x00"
        + encode_frame(HELLO.to_frame(seq=0x42, flags=ACKREQ | SYN))
        + encode_frame(error.to_frame(seq=0x43, ack=7, flags=ACKREQ | ACK))
    )


def test_status_get_is_answered_with_the_state_event_bytes() -> None:
    # The fake HAL's clock stands at 0: the self-test sweep shows its first pixel, uptime 0.
    text = "mode=SELFTEST lost=0 px=" + (bytes((CAP, CAP, CAP)) + pixels((0, 0, 0), N - 1)).hex()
    event = Message.make("EVENT", level=EventLevel.INFO, code=EV_STATE, time_ms=0, text=text)
    status_get = Message.make("STATUS_GET")
    assert wire(status_get.to_frame(seq=200, ack=0x42, flags=ACKREQ | ACK | SYN)) == (
        b"\x00"
        + encode_frame(HELLO.to_frame(seq=0x42, flags=ACKREQ | SYN))
        + encode_frame(event.to_frame(seq=0x43, ack=200, flags=ACKREQ | ACK))
    )


def test_every_firmware_module_compiles_with_mpy_cross(tmp_path: Path) -> None:
    # hal_rp2.py cannot run here; compiling it (with the rest) is what the unix port can check.
    mpy_cross = require_tool("mpy-cross")
    files = sorted((REPO / "ledfw").glob("*.py"))
    assert {"main.py", "fw.py", "render.py", "hal_rp2.py", "hal_unix.py", "manifest.py"} <= {
        f.name for f in files
    }
    for src in files:
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([mpy_cross, "-o", str(out), str(src)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"
        assert out.read_bytes()[:1] == b"M"  # an .mpy file


# --- hal_rp2 on stand-ins for the RP2040's peripherals ------------------------------------------------

# machine.Pin/PWM/UART and neopixel do not exist on the unix port: these record what the HAL asks of them,
# so its pin mapping and channel order are checked under the real interpreter (the rest is the board's).
FAKE_MACHINE = """
log = []
class Pin:
    OUT = 1
    def __init__(self, n, mode=None):
        self.n = n
class PWM:
    def __init__(self, pin, freq=0):
        self.pin = pin.n
        log.append(("pwm", pin.n, freq))
    def duty_u16(self, d):
        log.append(("duty", self.pin, d))
class UART:
    def __init__(self, *a, **k):
        pass
def unique_id():
    return b"\\x01" * 8
"""
FAKE_NEOPIXEL = """
import machine
class NeoPixel:
    def __init__(self, pin, n):
        self.buf = bytearray(3 * n)
        machine.log.append(("strip", pin.n, n))
    def write(self):
        machine.log.append(("shown", bytes(self.buf)))
"""


def run_hal_rp2(tmp_path: Path, ledboard: str | None, code: str) -> list[Any]:
    (tmp_path / "machine.py").write_text(FAKE_MACHINE)
    (tmp_path / "neopixel.py").write_text(FAKE_NEOPIXEL)
    if ledboard is not None:
        (tmp_path / "ledboard.py").write_text(ledboard)
    script = tmp_path / "driver.py"
    script.write_text("import json, machine, hal_rp2\n" + textwrap.dedent(code))
    proc = subprocess.run(
        [micropython_binary(), str(script)],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "MICROPYPATH": f"{tmp_path}:{MICROPYPATH}"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_the_light_guide_board_drives_five_rgb_leds_on_fifteen_pwm_channels(tmp_path: Path) -> None:
    out = run_hal_rp2(
        tmp_path,
        ledboard_source("light-guide"),
        """
        hal = hal_rp2.make()
        buf = hal.pixels(hal.n)
        for j in range(len(buf)):
            buf[j] = j * 10
        del machine.log[:]
        hal.write(buf)
        print(json.dumps([hal.n, [list(e) for e in machine.log]]))
        print(json.dumps(sorted(set(hal_rp2.pwm_channel(p) for t in hal_rp2.LIGHT_GUIDE for p in t))))
        """,
    )
    n, log = out[0]
    pins = [p for trio in ((2, 3, 4), (5, 6, 7), (8, 9, 10), (11, 12, 13), (14, 15, 16)) for p in trio]
    assert n == 5
    assert log == [["duty", pin, j * 10 * 257] for j, pin in enumerate(pins)]  # LED i: R G B on its pins
    assert len(out[1]) == 15  # no two outputs on one PWM slice channel


def test_a_strip_from_ledboard_is_written_in_the_ws2812_s_grb_order_and_bad_pins_are_refused(
    tmp_path: Path,
) -> None:
    out = run_hal_rp2(
        tmp_path,
        ledboard_source("strip:3"),
        """
        hal = hal_rp2.make()
        hal.write(bytes([1, 2, 3, 4, 5, 6, 7, 8, 9]))
        print(json.dumps([hal.n, [list(e) if e[0] == "strip" else e[1].hex() for e in machine.log]]))
        try:
            hal_rp2.Hal(rgb_pins=((2, 3, 4), (18, 19, 20)))
        except ValueError as e:
            print(json.dumps(str(e)))
        """,
    )
    assert out[0] == [3, [["strip", 16, 3], "020103050406080709"]]
    assert out[1] == "GP2 and GP18 share PWM slice 1 channel A"
