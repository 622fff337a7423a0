"""Broker credentials: one random password per node and one for the coordinator.

The passwords live in one JSON file in the coordinator's state directory, mode 0600,
written atomically (temp file, fsync, ``os.replace``)::

    {"version": 1, "users": {"coordinator": "...", "rack1-01": "..."}}

mosquitto never sees that file. Its dynamic-security plugin gets salted hashes
(``dynsec_hash``: PBKDF2-HMAC-SHA512, as the plugin computes it), and a node added while the
broker runs is handed to the plugin's control API over the coordinator's own connection.

Adding a node adds its password and keeps every other one; a node that leaves the list loses
its password (and so its access, at the next reload).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from ...atomic import atomic_write
from ..errors import ConfigError, UnknownNode
from .config import PasswordHash

__all__ = [
    "CREDENTIALS_VERSION",
    "DYNSEC_ITERATIONS",
    "dynsec_hash",
    "ensure_credentials",
    "load_credentials",
    "new_password",
    "node_password",
]

CREDENTIALS_VERSION = 1
DYNSEC_ITERATIONS = 101  # what mosquitto_ctrl and the plugin itself use (each CONNECT pays it)

log = logging.getLogger("scalerunner.coordinator.broker")


def new_password() -> str:
    """32 URL-safe characters (192 random bits): no ':' and no newline, as mosquitto needs."""
    return secrets.token_urlsafe(24)


def load_credentials(path: Path) -> Mapping[str, str]:
    """User name → password from the credentials file; empty if there is none yet.

    ConfigError (naming the file) if it is unreadable or not a credentials file. A file
    readable by others is set back to 0600, with a warning.
    """
    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        return MappingProxyType({})
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the broker credentials: {exc}") from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.warning(
            "credentials file was readable by others; set to 0600",
            extra={"path": str(path), "mode": oct(stat.S_IMODE(st.st_mode))},
        )
        os.chmod(path, 0o600)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(str(path), "", f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != CREDENTIALS_VERSION:
        raise ConfigError(str(path), "version", f"expected a version {CREDENTIALS_VERSION} credentials file")
    users = doc.get("users")
    if not isinstance(users, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in users.items()
    ):
        raise ConfigError(str(path), "users", "expected an object of user name to password")
    return MappingProxyType(dict(users))


def ensure_credentials(path: Path, users: Iterable[str]) -> Mapping[str, str]:
    """Exactly ``users``, each with a password: existing ones kept, new ones made, users not
    listed dropped. The file is rewritten (atomically, 0600) only when that changes it."""
    wanted = list(dict.fromkeys(users))
    old = load_credentials(path)
    new = {user: old.get(user) or new_password() for user in wanted}
    if new != dict(old):
        added = sorted(set(new) - set(old))
        dropped = sorted(set(old) - set(new))
        doc = {"version": CREDENTIALS_VERSION, "users": new}
        atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode(), 0o600)
        log.info("broker credentials updated", extra={"path": str(path), "added": added, "dropped": dropped})
    return MappingProxyType(new)


def node_password(path: Path, node: str) -> str:
    """The broker password of ``node`` (what a booting node receives for its one-time token);
    UnknownNode if it has none."""
    password = load_credentials(path).get(node)
    if password is None:
        raise UnknownNode(node)
    return password


def dynsec_hash(
    password: str, *, salt: bytes | None = None, iterations: int = DYNSEC_ITERATIONS
) -> PasswordHash:
    """``password`` as the dynamic-security plugin checks it: PBKDF2-HMAC-SHA512, 64 bytes, over a
    random 12-byte salt (the plugin's own length), both base64."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return PasswordHash(base64.b64encode(digest).decode(), base64.b64encode(salt).decode(), iterations)
