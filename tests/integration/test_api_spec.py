"""The OpenAPI spec documents the error bodies the API really returns (401, 404, 409, 422).

`scalerunner up` runs as a process with two nodes and no agents; each request below is made over
HTTP, then its status must be documented for that operation in /openapi.json and its body must
conform to the documented schema (a small JSON-schema check: $ref, type, required, properties,
anyOf; enough for the API's models).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
N1 = "rack1-01"


def conforms(value: Any, schema: dict[str, Any], spec: dict[str, Any], where: str = "$") -> list[str]:
    """What in ``value`` breaks ``schema`` (empty: it conforms)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return conforms(value, spec["components"]["schemas"][name], spec, where)
    if "anyOf" in schema:
        tries = [conforms(value, option, spec, where) for option in schema["anyOf"]]
        return [] if any(not t for t in tries) else [f"{where}: matches none of anyOf"]
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind in ("integer", "number"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok and (kind == "number" or isinstance(value, int)) else [f"{where}: not {kind}"]
    if kind is not None and not isinstance(value, kinds[kind]):
        return [f"{where}: {value!r} is not {kind}"]
    problems: list[str] = []
    if isinstance(value, dict):
        problems += [f"{where}.{k}: missing" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += conforms(value[key], sub, spec, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += conforms(item, schema["items"], spec, f"{where}[{i}]")
    return problems


class Api:
    def __init__(self, root: Path) -> None:
        (root / "inv.toml").write_text(
            '[cluster]\nname = "lab"\n[broker]\nhost = "127.0.0.1"\nport = 0\n[api]\nlisten = "127.0.0.1:0"\n'
            + "".join(
                f'[[nodes]]\nname = "{n}"\nmac = "02:00:00:00:00:0{i}"\narch = "amd64"\n'
                for i, n in enumerate((N1, "rack1-02"), 1)
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCALERUNNER_")}
        env["SCALERUNNER_HOME"] = str(root / "home")
        with (root / "up.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "scalerunner"), "up", "--config", str(root / "inv.toml"), "--api-port", "0"],
                cwd=root,
                env=env,
                stdout=log,
                stderr=log,
            )
        api = root / "home" / "api.json"
        deadline = time.monotonic() + 20
        while not api.exists():
            assert self.proc.poll() is None, (root / "up.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "scalerunner up did not record its API"
            time.sleep(0.05)
        saved = json.loads(api.read_text())
        self.url, self.token = saved["url"], saved["token"]
        self.spec: dict[str, Any] = httpx.get(self.url + "/openapi.json", timeout=10).json()

    def call(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def check(self, resp: httpx.Response, template: str) -> dict[str, Any]:
        """``resp`` is documented for ``template`` (the spec's path) and its body conforms."""
        operation = self.spec["paths"][template][resp.request.method.lower()]
        status = str(resp.status_code)
        assert status in operation["responses"], f"{resp.request.method} {template}: {status} not documented"
        documented = operation["responses"][status]["content"]["application/json"]["schema"]
        body: dict[str, Any] = resp.json()
        assert conforms(body, documented, self.spec) == [], (template, status, body, documented)
        return body

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed")
    a = Api(tmp_path_factory.mktemp("api"))
    try:
        yield a
    finally:
        a.close()


@pytest.mark.parametrize(
    ("method", "path", "template", "kwargs", "status", "says"),
    [
        ("GET", "/api/v1/nodes", "/api/v1/nodes", {"auth": False}, 401, "bearer token"),
        ("GET", "/api/v1/nodes/nope", "/api/v1/nodes/{name}", {}, 404, "nope"),
        ("POST", "/api/v1/nodes/nope/undrain", "/api/v1/nodes/{name}/undrain", {}, 404, "nope"),
        ("POST", f"/api/v1/nodes/{N1}/drain", "/api/v1/nodes/{name}/drain", {}, 409, "not connected"),
        ("POST", f"/api/v1/nodes/{N1}/identify", "/api/v1/nodes/{name}/identify", {}, 409, "not connected"),
        ("POST", f"/api/v1/nodes/{N1}/reboot", "/api/v1/nodes/{name}/reboot", {}, 409, "not connected"),
        (
            "PUT",
            f"/api/v1/nodes/{N1}/health",
            "/api/v1/nodes/{name}/health",
            {"json": {"health": "sideways", "reason": "x"}},
            422,
            "body.health",
        ),
        (
            "PUT",
            f"/api/v1/nodes/{N1}/health",
            "/api/v1/nodes/{name}/health",
            {"json": {"health": "good", "reason": "   "}},
            422,
            "reason",
        ),
        (
            "POST",
            f"/api/v1/nodes/{N1}/drain",
            "/api/v1/nodes/{name}/drain",
            {"json": {"reason": "x" * 501}},
            422,
            "body.reason",
        ),
        ("GET", "/api/v1/events?limit=0", "/api/v1/events", {}, 422, "query.limit"),
    ],
)
def test_each_error_is_documented_for_its_route_with_the_body_it_has(
    api: Api, method: str, path: str, template: str, kwargs: dict[str, Any], status: int, says: str
) -> None:
    resp = api.call(method, path, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = api.check(resp, template)
    assert says in body["error"], body


def test_every_operation_behind_the_token_documents_401_and_no_422_is_fastapis_own(api: Api) -> None:
    for path, item in api.spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if operation.get("security"):
                assert "401" in responses, (method, path)
            for status, documented in responses.items():
                if status[0] in "45":
                    ref = documented["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorBody", (method, path, status)
    assert "HTTPValidationError" not in api.spec["components"]["schemas"]


def test_the_check_refuses_fastapis_default_validation_body(api: Api) -> None:
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    fastapi_default = {"detail": [{"loc": ["query", "limit"], "msg": "too small", "type": "x"}]}
    assert conforms(fastapi_default, error_body, api.spec) == ["$.error: missing"]
    assert conforms({"error": 3}, error_body, api.spec) == ["$.error: 3 is not string"]
