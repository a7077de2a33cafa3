"""AIP-158 pagination: page_size rules and opaque, tamper-proof page tokens.

A token carries a position in the list (the last row's name for keyset pages, an offset elsewhere),
encrypted, so it shows nothing of the list, and authenticated together with the caller's principal and
the request's filters (the scope): a forged or edited token, one of another principal, or one of another
request is INVALID_ARGUMENT naming page_token. Encryption is HMAC-SHA256 in counter mode, then an
HMAC-SHA256 tag over everything (encrypt-then-MAC; the standard library has no AES). The key is the
server's shared secret (`core/server_secrets.py`), so every replica on one database accepts every token.

    token = base64url(version 0x01 | nonce (12) | ciphertext | tag (16))
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine

from foretell.core import auth
from foretell.core.errors import invalid
from foretell.core.resources import Page
from foretell.core.server_secrets import PAGE_TOKENS, shared_secret

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_VERSION = b"\x01"
_NONCE = 12
_TAG = 16
# Positions are names (at most a few hundred bytes) or offsets: a longer token is not one of ours.
MAX_TOKEN_CHARS = 2048


def page_size(value: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if value < 0:
        raise invalid("page_size", "must not be negative")
    return min(value or default, maximum)


def _refused() -> Exception:
    # One answer for every bad token: which check failed would only help a forger.
    return invalid("page_token", "is not a page token this server issued for this caller and request")


class PageTokens:
    """Issues and checks page tokens under one secret."""

    def __init__(self, secret: bytes) -> None:
        self._encryption = hmac.digest(secret, b"foretell page tokens: encryption", "sha256")
        self._authentication = hmac.digest(secret, b"foretell page tokens: authentication", "sha256")

    @classmethod
    def of_database(cls, engine: Engine) -> PageTokens:
        """Tokens under the database's shared secret: every replica on it accepts them."""
        return cls(shared_secret(engine, PAGE_TOKENS))

    @classmethod
    def ephemeral(cls) -> PageTokens:
        """Tokens only this object accepts (pure helpers and tests)."""
        return cls(secrets.token_bytes(32))

    def _keystream(self, nonce: bytes, size: int) -> bytes:
        blocks = (size + 31) // 32
        return b"".join(hmac.digest(self._encryption, nonce + i.to_bytes(4, "big"), "sha256") for i in range(blocks))[
            :size
        ]

    def _tag(self, body: bytes, scope: str) -> bytes:
        bound = hashlib.sha256(auth.identity().encode()).digest()
        bound += hashlib.sha256(scope.encode()).digest()
        return hmac.digest(self._authentication, body + bound, "sha256")[:_TAG]

    def encode(self, position: str, scope: str) -> str:
        """A token for the page after `position`, bound to the caller and to `scope` (the request's filters)."""
        plain = position.encode()
        nonce = secrets.token_bytes(_NONCE)
        body = _VERSION + nonce + bytes(a ^ b for a, b in zip(plain, self._keystream(nonce, len(plain)), strict=True))
        return base64.urlsafe_b64encode(body + self._tag(body, scope)).decode().rstrip("=")

    def decode(self, token: str, scope: str) -> str | None:
        """The position in a token, None for the first page; INVALID_ARGUMENT naming page_token otherwise."""
        if not token:
            return None
        if len(token) > MAX_TOKEN_CHARS:
            raise _refused()
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raise _refused() from None
        body, tag = raw[:-_TAG], raw[-_TAG:]
        if len(body) <= len(_VERSION) + _NONCE or not body.startswith(_VERSION):
            raise _refused()
        if not hmac.compare_digest(tag, self._tag(body, scope)):
            raise _refused()
        nonce, cipher = body[1 : 1 + _NONCE], body[1 + _NONCE :]
        try:
            return bytes(a ^ b for a, b in zip(cipher, self._keystream(nonce, len(cipher)), strict=True)).decode()
        except UnicodeDecodeError:
            raise _refused() from None

    def paged(self, request: Any, scope: str, fetch: Callable[[int, str | None], Page]) -> tuple[Sequence[Any], str]:
        """One page of rows of a List request (page_size, page_token) and the next page token, bound to `scope`."""
        page = fetch(page_size(request.page_size), self.decode(request.page_token, scope))
        return page.rows, self.encode(page.last, scope) if page.last else ""
