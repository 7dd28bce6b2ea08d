"""Standard Webhooks v1 signatures: webhook-id, webhook-timestamp, webhook-signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from functools import lru_cache


def message_id(subscription: int, body: bytes) -> str:
    """Stable for the same batch across retries: derived from what is sent, not when."""
    digest = hashlib.sha256(b"%d." % subscription)
    digest.update(body)  # not concatenated: a body of 1000 rows is not copied
    return f"msg_{digest.hexdigest()[:32]}"


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with a ``whsec_`` secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(_key(secret), signed, "sha256")).decode()


@lru_cache(maxsize=4096)
def _key(secret: str) -> bytes:
    """A secret's key bytes; secrets repeat every poll, so each is decoded once."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def headers(
    subscription: int, body: bytes, secrets: Sequence[str], timestamp: int
) -> dict[str, str]:
    """The three headers; during a rotation every live secret signs, space-separated."""
    msg_id = message_id(subscription, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets),
    }
