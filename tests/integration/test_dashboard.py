"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a real
coordinator: its managed mosquitto, its power manager on the simulated PoE switch over SNMP, nodes
publishing the agent's real MQTT payloads (tests/integration/dashboard_rack.py), and one real
``scalerunner-agent`` that runs a job in the process runtime."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.dashboard_rack import DashboardRack

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(90)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
N = 4
AGENT = "rack1-04"  # a real agent; the others are MQTT clients the tests steer
GREEN, YELLOW, RED, DARK = "#00ff00", "#ffff00", "#ff0000", "#000000"


# Playwright starts each launch on a fresh temporary profile of its own (it refuses --user-data-dir).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardRack]:
    r = DashboardRack(tmp_path_factory.mktemp("rack"), nodes=N)
    try:
        r.start_agent(AGENT)
        for name in r.names[:-1]:
            r.node_online(name)
            r.telemetry(name, 0.0, 30.0)
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run make setup (tools/apt-packages.txt lists chromium)")
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: object, rack: DashboardRack) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1600, "height": 900})  # type: ignore[attr-defined]
    p = context.new_page()
    p.set_default_timeout(15_000)
    p.goto(f"{rack.url}/#token={rack.token}")
    playwright_api.expect(p.locator(".row .node")).to_have_count(N)  # the snapshot is drawn
    yield p
    context.close()


def pixels(page: object, node: str) -> list[str]:
    return page.eval_on_selector_all(  # type: ignore[attr-defined, no-any-return]
        f'[data-node="{node}"] .led .px', "els => els.map(e => e.dataset.colour)"
    )


def test_the_page_draws_every_node_of_the_rack_in_its_row_with_state_and_power(
    page: object, rack: DashboardRack
) -> None:
    tiles = page.locator(".row .node")  # type: ignore[attr-defined]
    playwright_api.expect(tiles).to_have_count(N)
    assert tiles.evaluate_all("els => els.map(e => e.dataset.node)") == rack.names
    assert tiles.evaluate_all("els => els.map(e => e.style.gridColumn)") == ["1", "2", "3", "4"]
    first = page.locator('[data-node="rack1-01"]')  # type: ignore[attr-defined]
    playwright_api.expect(first).to_have_attribute("data-state", "idle")
    playwright_api.expect(first.locator(".watts")).to_have_text("2.5 W")  # the sim switch's idle draw
    playwright_api.expect(page.locator("#link")).to_have_text("live")  # type: ignore[attr-defined]
    # the token came in the fragment once: it is gone from the address bar
    assert "token" not in page.url  # type: ignore[attr-defined]
    # the page itself is public and allows no script from anywhere but the coordinator; the stream is not
    got = httpx.get(f"{rack.url}/")
    assert got.status_code == 200 and "default-src 'self'" in got.headers["content-security-policy"]
    assert httpx.get(f"{rack.url}/api/v1/stream").status_code == 401


def test_a_nodes_led_follows_its_load_and_temperature_as_the_firmware_lights_it(
    page: object, rack: DashboardRack
) -> None:
    node = "rack1-02"
    rack.telemetry(node, 0.0, 30.0)
    page.wait_for_function(  # type: ignore[attr-defined]
        f"""() => [...document.querySelectorAll('[data-node="{node}"] .px')]
                .filter(e => e.dataset.colour === '{DARK}').length === 8"""
    )
    rack.telemetry(node, 1.0, 30.0)  # 1 of 4 cpus: 25 % lights 2 of 8 pixels, cool: green
    page.wait_for_function(  # type: ignore[attr-defined]
        f"() => document.querySelector('[data-node=\"{node}\"]').dataset.led === '{GREEN}'"
    )
    assert pixels(page, node) == [GREEN] * 2 + [DARK] * 6
    rack.telemetry(node, 4.0, 75.0)  # full load, hot: every pixel red
    page.wait_for_function(  # type: ignore[attr-defined]
        f"() => document.querySelector('[data-node=\"{node}\"]').dataset.led === '{RED}'"
    )
    assert pixels(page, node) == [RED] * 8
    assert pixels(page, "rack1-01") == [DARK] * 8  # the others did not move


def test_power_cycle_asks_first_and_once_confirmed_turns_the_port_off_then_on(
    page: object, rack: DashboardRack
) -> None:
    node, port = "rack1-03", 3
    before = list(rack.port_changes)
    dialogs: list[str] = []

    def dismiss(d: object) -> None:
        dialogs.append(d.message)  # type: ignore[attr-defined]
        d.dismiss()  # type: ignore[attr-defined]

    page.once("dialog", dismiss)  # type: ignore[attr-defined]
    page.locator(f'[data-node="{node}"] button.cycle').click()  # type: ignore[attr-defined]
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    assert dialogs == [f"Power-cycle {node}? It loses power and reboots."]
    assert rack.port_changes == before  # refused at the dialog: the switch saw nothing

    page.once("dialog", lambda d: d.accept())  # type: ignore[attr-defined]
    page.locator(f'[data-node="{node}"] button.cycle').click()  # type: ignore[attr-defined]
    playwright_api.expect(page.locator("#action-result")).to_contain_text(  # type: ignore[attr-defined]
        f"{node}: cycle done", timeout=20_000
    )
    assert rack.port_changes[len(before) :] == [(port, False), (port, True)]


def test_a_wrong_token_shows_the_login_form_and_the_right_one_opens_the_board(
    browser: object, rack: DashboardRack
) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    try:
        p = context.new_page()
        p.goto(f"{rack.url}/#token=wrong")
        playwright_api.expect(p.locator("#login-error")).to_have_text("The coordinator refused the token.")
        p.fill("#token", rack.token)
        p.click("#login button")
        playwright_api.expect(p.locator(".row .node")).to_have_count(N)
    finally:
        context.close()


def test_a_running_jobs_log_arrives_live_and_is_shown_as_text_never_as_html(
    page: object, rack: DashboardRack
) -> None:
    assert rack.coordinator is not None
    deadline = time.monotonic() + 20
    while rack.coordinator.nodes.records[AGENT].state.value != "idle":
        assert time.monotonic() < deadline, f"{AGENT} (a real agent) not idle within 20 s"
        time.sleep(0.1)
    api = httpx.Client(base_url=rack.url, headers={"Authorization": f"Bearer {rack.token}"}, timeout=10)
    with api:
        api.put(f"/api/v1/nodes/{AGENT}/health", json={"health": "good", "reason": "test"}).raise_for_status()
        hostile = "<img src=x onerror=window.__xss=1>"
        script = f"echo '{hostile}'; sleep 1.5; echo second line"
        spec = {"name": "shows-html", "script": script, "retries": 0, "timeout": 60}
        job = api.post("/api/v1/jobs", json=spec).json()["id"]
    row = page.locator(f'#jobs tr[data-job="{job}"]')  # type: ignore[attr-defined]
    playwright_api.expect(row).to_have_count(1)
    row.click()
    log = page.locator("#log")  # type: ignore[attr-defined]
    playwright_api.expect(log).to_contain_text(hostile, timeout=20_000)
    playwright_api.expect(log).to_contain_text("second line", timeout=20_000)  # came later, live
    playwright_api.expect(row).to_contain_text("succeeded", timeout=20_000)
    assert log.locator("img").count() == 0
    assert page.evaluate("window.__xss === undefined")  # type: ignore[attr-defined]


def test_the_coordinator_stops_at_once_while_a_dashboard_stream_is_open(tmp_path: Path) -> None:
    # uvicorn waits for open responses before it stops: the feed must end its streams first
    rack = DashboardRack(tmp_path, nodes=1)
    lines: list[str] = []

    def follow() -> None:
        headers = {"Authorization": f"Bearer {rack.token}"}
        with httpx.stream("GET", f"{rack.url}/api/v1/stream", headers=headers, timeout=30) as r:
            lines.extend(r.iter_lines())

    reader = threading.Thread(target=follow, daemon=True)
    try:
        reader.start()
        deadline = time.monotonic() + 10
        while "event: snapshot" not in lines:
            assert time.monotonic() < deadline, "no snapshot on the stream"
            time.sleep(0.02)
    finally:
        t0 = time.monotonic()
        rack.close()
    assert time.monotonic() - t0 < 5.0
    reader.join(5)
    assert not reader.is_alive()  # the stream ended with the coordinator
