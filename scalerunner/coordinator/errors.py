"""The coordinator's exception types: few, each with structured fields.

The CLI turns each into one readable line and a documented exit code.
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base of the coordinator's errors."""


class ConfigError(CoordinatorError):
    """Invalid configuration: ``path`` is the file, ``key`` the dotted key (or "")."""

    def __init__(self, path: str, key: str, detail: str) -> None:
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {detail}")
        self.path = path
        self.key = key
        self.detail = detail


class StoreError(CoordinatorError):
    """The store failed; ``where`` names the database file or DSN."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"store {where}: {detail}")
        self.where = where
        self.detail = detail


class BrokerError(CoordinatorError):
    """The MQTT broker could not be started or reached; ``endpoint`` is host:port."""

    def __init__(self, endpoint: str, detail: str) -> None:
        super().__init__(f"broker {endpoint}: {detail}")
        self.endpoint = endpoint
        self.detail = detail


class NodeStateError(CoordinatorError):
    """An action not allowed in the node's state, e.g. a job for a draining node."""

    def __init__(self, node: str, state: str, detail: str) -> None:
        super().__init__(f"node {node} is {state}, {detail}")
        self.node = node
        self.state = state
        self.detail = detail


class UnknownNode(CoordinatorError):
    def __init__(self, node: str) -> None:
        super().__init__(f"no node named {node!r} in the inventory")
        self.node = node
