"""`make screenshot`: a PNG of the dashboard, taken in Debian's headless Chromium (Playwright).

From the running demo when there is one (`scalerunner sim up --detach` writes the coordinator's
address and token to DIR/api.json), else from a rack this script brings up for the picture: a
real coordinator with its mosquitto, the simulated PoE switch, and 14 nodes publishing the
agent's real MQTT payloads with a spread of load and temperature (tests/integration/dashboard_rack.py).

    python tools/dashboard_screenshot.py [--out docs/dashboard.png] [--rack-dir .scalerunner-sim]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.dashboard_rack import DashboardRack  # noqa: E402
from tests.integration.test_dashboard import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

# (load1 of 4 cpus, temperature): a row that shows every LED band and fill
SPREAD = [(0.3, 38), (1.2, 44), (2.5, 52), (4.0, 61), (0.8, 41), (3.4, 72), (0.1, 35),
          (1.9, 47), (2.9, 58), (0.0, 33), (3.9, 76), (1.5, 49), (0.6, 40), (2.2, 55)]  # fmt: skip


POINTS = 24  # power samples on the charts before the picture
MAX_WAIT_S = 30.0


def running_demo(rack_dir: Path) -> tuple[str, str] | None:
    try:
        endpoint = json.loads((rack_dir / "api.json").read_text())
        httpx.get(endpoint["url"] + "/healthz", timeout=2).raise_for_status()
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return None
    return endpoint["url"], endpoint["token"]


def vary(rack: DashboardRack, step: int) -> None:
    """Move load, temperature and PoE draw a little, as a working rack does."""
    for i, (name, (load, temp)) in enumerate(zip(rack.names[:-1], SPREAD, strict=False)):
        wave = 0.5 + 0.5 * math.sin((step + 3 * i) / 4)
        rack.draw(name, min(1.0, load / 4 * (0.6 + 0.8 * wave)))
        rack.telemetry(name, load, temp)


def shoot(
    url: str, token: str, out: Path, console: Console, busy: Callable[[int], None] = lambda step: None
) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 640})
            page.goto(f"{url}/#token={token}")
            page.wait_for_selector(".row .node", timeout=30_000)
            with console.status(f"waiting for {POINTS} power samples on the charts"):
                # POINTS samples, or what came within MAX_WAIT_S if at least 2 (a demo may sample slowly)
                for step in range(int(4 * MAX_WAIT_S)):
                    busy(step)
                    points = page.evaluate(
                        "Number(document.querySelector('#chart-power').dataset.points || 0)"
                    )
                    if points >= POINTS or (points >= 2 and step >= 2 * MAX_WAIT_S):
                        break
                    page.wait_for_timeout(500)
            page.wait_for_timeout(500)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def own_rack(out: Path, console: Console) -> None:
    with tempfile.TemporaryDirectory(prefix="scalerunner-shot-") as tmp:
        with console.status("starting a coordinator, its mosquitto and the simulated PoE switch"):
            rack = DashboardRack(Path(tmp), nodes=len(SPREAD))
        try:
            with console.status("bringing 14 nodes online"):
                for name in rack.names[:-1]:  # the last one stays off: no agent, dark LED
                    rack.node_online(name)
                time.sleep(1.0)
                for name, (load, temp) in zip(rack.names[:-1], SPREAD, strict=False):
                    rack.telemetry(name, load, temp)
                headers = {"Authorization": f"Bearer {rack.token}"}
                for name, script in [("nightly-build", "make -j4"), ("fpga-regression", "make hil")]:
                    spec = {"name": name, "script": script, "labels": ["gpu"], "project": "ci"}
                    httpx.post(f"{rack.url}/api/v1/jobs", json=spec, headers=headers).raise_for_status()
                health = {"health": "maintenance", "reason": "fan check"}  # drain would wait on a real agent
                httpx.put(f"{rack.url}/api/v1/nodes/{rack.names[5]}/health", json=health, headers=headers)
            shoot(rack.url, rack.token, out, console, busy=lambda step: vary(rack, step))
        finally:
            with console.status("stopping the rack"):
                rack.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--rack-dir", type=Path, default=Path(".scalerunner-sim"))
    args = parser.parse_args()
    console = Console(stderr=True)
    demo = running_demo(args.rack_dir)
    if demo is not None:
        console.print(f"screenshot of the running demo at {demo[0]}")
        shoot(demo[0], demo[1], args.out, console)
    else:
        console.print(
            f"no demo runs in {args.rack_dir}: starting a rack of {len(SPREAD)} nodes for the picture"
        )
        own_rack(args.out, console)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
