"""Broker credentials: one random password per node and one for the coordinator.

The passwords live in one JSON file in the coordinator's state directory, mode 0600,
written atomically (temp file, fsync, ``os.replace``)::

    {"version": 1, "users": {"coordinator": "...", "rack1-01": "..."}}

mosquitto never sees that file. It gets a ``password_file`` of salted hashes made by
``mosquitto_passwd -U`` from a plaintext temp file that is hashed in place before it is
renamed into position, so no plaintext is ever left where mosquitto (or anyone) looks.

Adding a node adds its password and keeps every other one; a node that leaves the list loses
its password (and so its access, at the next reload).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from ...atomic import atomic_write, fsync_dir
from ..errors import ConfigError, UnknownNode

__all__ = [
    "CREDENTIALS_VERSION",
    "ensure_credentials",
    "load_credentials",
    "new_password",
    "node_password",
    "write_password_file",
]

CREDENTIALS_VERSION = 1

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


def write_password_file(
    path: Path, passwords: Mapping[str, str], *, mosquitto_passwd: str = "mosquitto_passwd"
) -> None:
    """mosquitto's ``password_file`` for ``passwords``, hashed by ``mosquitto_passwd -U``.

    The plaintext goes to a 0600 temp file beside ``path``, is hashed in place, checked to
    hold only hashes, and renamed over ``path``; on any failure the temp file is removed.
    OSError if ``mosquitto_passwd`` is missing or fails.
    """
    for user, password in passwords.items():
        if not user or any(c in user for c in ":\n\r") or any(c in password for c in ":\n\r"):
            raise ValueError(f"user {user!r}: ':' and line breaks cannot go in a mosquitto password file")
    tmp = path.with_name(f".{path.name}.plain")
    tmp.unlink(missing_ok=True)  # a crash between write and hash could have left one
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.writelines(f"{user}:{password}\n" for user, password in passwords.items())
        done = subprocess.run(
            [mosquitto_passwd, "-U", str(tmp)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            umask=0o077,  # mosquitto_passwd makes a scratch file beside the one it updates
            check=False,
        )
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()
            raise OSError(f"{mosquitto_passwd} -U exited with {done.returncode}: {detail}")
        hashed = tmp.read_text().splitlines()
        expected = {f"{user}:" for user in passwords}
        if len(hashed) != len(passwords) or not all(
            line.split(":", 1)[0] + ":" in expected and line.split(":", 1)[1].startswith("$")
            for line in hashed
        ):
            raise OSError(f"{mosquitto_passwd} -U did not hash every line of {tmp}")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
