"""The API's error responses as the OpenAPI spec documents them.

Every error the API returns is ``ErrorBody`` JSON: ``{"error": "...", "node": ...}`` (other
parts add their own key, e.g. ``job``). FastAPI's spec would show its own 422 body
(``{"detail": [...]}``), which this API never sends, and no 401 at all, so ``document_errors``
rewrites the generated spec: every 422 is ``ErrorBody``, every operation behind the bearer token
documents 401. Routes add what they can return themselves with ``responses=errors(404, 409)``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from .models import ErrorBody

DESCRIPTIONS = {
    401: "missing or wrong bearer token",
    404: "no such node (or other object named in the path)",
    409: "the node's state forbids it; the error names the state",
    422: "the request is not valid: each problem as `location: message`, joined by `; `",
    502: "the node refused the command; the error quotes its reason",
    504: "the node did not answer in time, or the command could not be delivered",
}

_REF = "#/components/schemas/ErrorBody"


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the given error statuses, each with an ``ErrorBody``."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def _error(code: int) -> dict[str, Any]:
    return {
        "description": DESCRIPTIONS[code],
        "content": {"application/json": {"schema": {"$ref": _REF}}},
    }


def rewrite_spec(schema: dict[str, Any]) -> dict[str, Any]:
    """The generated spec with the API's real 401 and 422 bodies (idempotent)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if "422" in responses:
                responses["422"] = _error(422)
            if operation.get("security"):
                responses.setdefault("401", _error(401))
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def document_errors(app: FastAPI) -> None:
    """Serve ``rewrite_spec`` of FastAPI's spec at /openapi.json (for routes added later too)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return rewrite_spec(generate())

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["DESCRIPTIONS", "document_errors", "errors", "rewrite_spec"]
