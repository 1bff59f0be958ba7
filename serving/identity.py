"""What the server keeps of who asked: keyed hashes (HMAC-SHA256 with a server secret), never the
key or the user id itself.

A bare sha256 of a user id or an API key can be reversed by anyone who reads the evidence rows and
can guess the inputs (user ids and e-mail addresses are guessable); an HMAC cannot without the
secret. The secret is `--hash-secret` (LORA_PLATFORM_HASH_SECRET); without it one is generated on
first start and kept, readable only by its owner, in `<registry folder>/server_secret` (a database
registry: `<LORA_PLATFORM_HOME>/server_secret`; replicas sharing a database should be given the
same `--hash-secret`, or feedback sent to another replica is refused).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import uuid
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("lora_platform.serving")
SECRET_FILE = "server_secret"


class KeyHasher:
    """Keyed hashes of user ids (the A/B evidence's `user_hash`) and of API keys (`key_hash`, the
    owner of a completion for feedback). On a server without `--api-key` (`authenticated` False)
    a bearer header proves nothing: no key hash is kept and feedback is open to any client."""

    def __init__(self, secret: bytes, authenticated: bool = True) -> None:
        self._secret = secret
        self.authenticated = authenticated

    def _digest(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    def user(self, user_id: str | None) -> str | None:
        """What the evidence keeps of a user id: a short keyed hash."""
        return self._digest("user", user_id)[:16] if user_id else None

    def api_key(self, key: str | None) -> str | None:
        """The keyed hash of the API key a request came with (None without one, or on a server
        that checks no keys)."""
        return self._digest("api-key", key) if key and self.authenticated else None

    def same_key(self, stored: str | None, given: str | None) -> bool:
        """Whether a request with API key `given` may act on a completion made with `stored`
        (the keyed hash kept with it): the same key, or no key on the completion (or the server)."""
        if stored is None or not self.authenticated:
            return True
        mine = self.api_key(given)
        return mine is not None and hmac.compare_digest(mine, stored)


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def server_secret(given: str | None, registry_root: Path | None) -> bytes:
    """`given`, else the secret kept beside the registry (created on first use)."""
    if given:
        return given.encode()
    if registry_root is not None:
        return _kept_secret(registry_root / SECRET_FILE)
    from registry.paths import home

    log.warning(
        "no --hash-secret given: user and key hashes use %s; give every replica the same secret",
        home() / SECRET_FILE,
    )
    return _kept_secret(home() / SECRET_FILE)


def _kept_secret(path: Path) -> bytes:
    """The secret in `path`, created (mode 0600) if missing: written aside and linked into place,
    so a second process starting at once reads the same secret, never a half-written one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}-{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: use its secret
        finally:
            tmp.unlink()
    return path.read_bytes().strip()
