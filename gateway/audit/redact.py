"""Credentials a client put where they do not belong stay out of the audit trail.

A client may send its API key as X-Request-Id, paste a token into a URL path, or a
script may build a path from a secret: whatever it chose is recorded only after every
key-shaped run is replaced (OWASP Logging Cheat Sheet, "data to exclude": access tokens,
keys, passwords; CWE-532). What counts as key-shaped:

- scoregate API keys (`sg_<id>_<secret>_<checksum>`), whole or cut short;
- JSON Web Tokens (three base64url segments, the first `eyJ`, as every JWT header is);
- `Bearer …`/`Basic …` credentials;
- any other run of 40 or more base64 or hex characters without a separator (`/` is
  one: it separates a path's segments, and a path is where keys get pasted): the shape
  of random secrets of 256 bits or more (Azure storage keys, SAS signatures, GitHub and
  cloud tokens). Correlation ids stay readable: ours are 32 hex digits, UUIDs have
  dashes. (A 128-bit secret written as 32 hex digits is the one shape left alone: it
  cannot be told from such an id.)
"""

from __future__ import annotations

import re
from typing import overload

REDACTED = "[redacted]"
_KEY_SHAPED = re.compile(
    r"sg_[a-z2-7]{4,}(?:_[a-z2-7]*)?(?:_[0-9a-f]*)?"
    r"|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?"
    r"|(?:Bearer|Basic)\s+\S+"
    r"|[A-Za-z0-9+=_]{40,}",
    re.IGNORECASE,
)


@overload
def redact(value: str) -> str: ...


@overload
def redact(value: None) -> None: ...


def redact(value: str | None) -> str | None:
    """``value`` with every key-shaped run replaced by ``[redacted]``."""
    if value is None:
        return None
    return _KEY_SHAPED.sub(REDACTED, value)
