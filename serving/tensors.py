"""What the gateway and the scorers both measure of an inference body, before any of it is
converted (OWASP API4: refuse by size before doing the work)."""

from __future__ import annotations

from typing import Any


def count_leaves(value: Any, limit: int) -> int:
    """Scalars in nested lists (a tensor's `data`, a v1 instance), counted without
    recursion or conversion; a scalar counts one. Stops once past ``limit``."""
    if not isinstance(value, list):
        return 1
    count, stack = 0, [value]
    while stack and count <= limit:
        items = stack.pop()
        nested = [i for i in items if isinstance(i, list)]  # ragged shapes are counted too
        count += len(items) - len(nested)
        stack.extend(nested)
    return count
