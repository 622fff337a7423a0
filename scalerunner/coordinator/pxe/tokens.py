"""One-time boot tokens: minted when a node's iPXE script is served, traded once by its agent
for the node's broker credentials (docs/netboot.md).

A token is 256 random bits (``secrets.token_urlsafe``). Only its sha256 digest is stored, with
the node and an expiry, so the store never holds a usable secret. A trade looks the token up by
digest and deletes it in one statement (``Store.take_boot_token``): two concurrent trades of one
token cannot both win, and an expired one is as good as none. The lookup is by digest, so the
time it takes says nothing about the token; the node named in the request is compared with
``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["TOKEN_BYTES", "BootTokens", "TokenRejected", "TokenStore", "token_digest"]

TOKEN_BYTES = 32
# What token_urlsafe makes: anything else is refused before the store is asked.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")

log = logging.getLogger("scalerunner.coordinator.pxe.tokens")


class TokenStore(Protocol):
    """The part of ``Store`` the tokens need."""

    async def put_boot_token(self, digest: str, node: str, expires_at: float) -> None: ...

    async def take_boot_token(self, digest: str, now: float) -> str | None: ...

    async def prune_boot_tokens(self, now: float) -> int: ...


class TokenRejected(Exception):
    """A trade refused: the token is unknown, already used, expired, or another node's."""

    def __init__(self, node: str, detail: str) -> None:
        super().__init__(f"node {node}: {detail}")
        self.node = node
        self.detail = detail


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class BootTokens:
    """Mint and trade tokens through a ``TokenStore``; ``ttl`` seconds of life each."""

    def __init__(self, store: TokenStore, ttl: float, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock

    async def mint(self, node: str) -> str:
        """A new token for ``node``; earlier unused ones stay valid until they expire (a node may
        fetch its script twice and boot from either)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        await self.store.put_boot_token(token_digest(token), node, now + self.ttl)
        return token

    async def trade(self, node: str, token: str) -> None:
        """Consume ``token`` for ``node``; TokenRejected if it is not a live token of that node.

        Whatever the outcome, a token presented here is used up: a valid token sent with another
        node's name was leaked, and is no good to anyone after that."""
        if not _TOKEN.match(token):
            raise TokenRejected(node, "the boot token is malformed")
        owner = await self.store.take_boot_token(token_digest(token), self.clock())
        if owner is None:
            raise TokenRejected(node, "the boot token is unknown, already used or expired")
        if not hmac.compare_digest(owner.encode(), node.encode()):
            log.warning("boot token of another node presented", extra={"node": node, "owner": owner})
            raise TokenRejected(node, "the boot token was not issued to this node")

    async def prune(self) -> int:
        return await self.store.prune_boot_tokens(self.clock())
