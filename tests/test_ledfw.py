"""ledfw/render.py under the real MicroPython unix port: the exact pixel bytes of every mode at given times,
the gamma table and the brightness cap. ledfw/tests_driver.py renders each case and prints it in hex."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.micropython]

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "ledfw" / "tests_driver.py"
CAP = 102  # 40 % of 255
OFF, SOLID, BLINK, BREATHE, GAUGE, IDENTIFY, ALERT, HOST_LOST, SELFTEST = 0, 1, 2, 3, 4, 5, 6, 100, 101


def micropython_binary() -> str:
    found = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")
    if found is None:
        pytest.fail("the micropython unix port is not installed (make setup installs it)")
    return found


def run_driver(*cases: str) -> list[bytes]:
    env = {**os.environ, "MICROPYPATH": os.pathsep.join([".frozen", str(REPO / "ledfw")])}
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
