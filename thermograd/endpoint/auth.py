"""HTTP basic authentication against the web config's bcrypt hashes, as the exporter-toolkit does it.

bcrypt is slow on purpose (~60 ms at cost 10), and Prometheus sends the same credentials on every scrape
of every target each second: so, like the toolkit, the verdict for one (user, hash, password) is cached
and bcrypt runs once per new combination, one at a time (a flood of wrong passwords costs one core at
most, never every core). The cache keys are SHA-256 digests, so no password is kept in memory. An unknown
user is checked against a fixed hash all the same, so a wrong user name takes as long as a wrong password
(no user enumeration by timing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping

CACHE_SIZE = 100  # verdicts kept (the toolkit keeps 100 too): a few scrapers, a few users
# bcrypt of a random password nobody knows, at cost 10 like the toolkit's own hashes.
_UNKNOWN_USER_HASH = b"$2b$10$HfU5Vtp5vmM7PD1ybXmzXOM8yH1qCbcwRwwwM.T1JPWL0icGqd6ti"


def credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic ...` header; None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class BasicAuth:
    """`check(header)` -> True when the Authorization header names a user of `users` with its password."""

    def __init__(self, users: Mapping[str, str]) -> None:
        import bcrypt  # only a server with basic_auth_users pays for it

        self._bcrypt = bcrypt
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        given = credentials(header)
        if given is None:
            return False
        user, password = given
        hashed = self._users.get(user)
        known = hashed is not None
        hashed = hashed if known else _UNKNOWN_USER_HASH
        key = hashlib.sha256(b"\0".join((user.encode(), hashed, password.encode()))).digest()
        with self._cache_lock:
            verdict = self._cache.get(key)
            if verdict is not None:
                self._cache.move_to_end(key)
                return verdict and known
        with self._bcrypt_lock:
            verdict = self._verify(password.encode(), hashed)
        with self._cache_lock:
            self._cache[key] = verdict
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return verdict and known

    def _verify(self, password: bytes, hashed: bytes) -> bool:
        try:
            return self._bcrypt.checkpw(password, hashed)
        except ValueError:  # over bcrypt's 72 bytes (Go's bcrypt refuses those too) or a malformed hash
            return False
