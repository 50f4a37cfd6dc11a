"""Who is calling: the virtual key a request carries, checked against the key store.

The key comes in ``Authorization: Bearer <key>`` (OpenAI clients) or
``x-api-key`` (Anthropic clients). With no key configured the proxy is open,
and the ledger keeps a short hash of whatever key a client sent (SDKs always
send one), so spend can still be told apart by caller.
"""

from __future__ import annotations

from typing import Any

from thrifty.errors import AuthenticationError
from thrifty.middleware.entry import key_hash

__all__ = ["KeyCheck", "bearer_secret"]


def bearer_secret(authorization: bytes | None, api_key: bytes | None) -> str | None:
    """The key in ``Authorization: Bearer ...`` or else ``x-api-key``; None when neither has one."""
    if authorization:
        text = authorization.decode("latin-1").strip()
        scheme, _, rest = text.partition(" ")
        secret = rest.strip() if scheme.lower() == "bearer" else text
        if secret:
            return secret
    if api_key:
        secret = api_key.decode("latin-1").strip()
        if secret:
            return secret
    return None


class KeyCheck:
    """Authenticates requests against ``store`` (a :class:`thrifty.middleware.limits.KeyStore`), if any."""

    __slots__ = ("store",)

    def __init__(self, store: Any = None) -> None:
        self.store = store

    async def identify(self, authorization: bytes | None, api_key: bytes | None) -> tuple[Any, str | None]:
        """``(virtual key or None, key id for the ledger)``; a 401 when a key is required and not valid."""
        secret = bearer_secret(authorization, api_key)
        store = self.store
        if store is None or not await store.arequired():
            return None, key_hash(secret) if secret else None
        if secret is None:
            raise AuthenticationError(
                "this proxy needs a key: send it as 'Authorization: Bearer <key>' or in an 'x-api-key' header"
            )
        key = await store.aauthenticate(secret)
        if key is None:
            raise AuthenticationError("the key is not valid (unknown or revoked); list keys with `thrifty keys list`")
        return key, key.key_id
