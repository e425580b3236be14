"""Bulkheads: requests in flight to the scorers, bounded per model and per principal.

Rate limits count requests over time; they do not stop one caller (or one model's
traffic) from holding every connection to a slow scorer at one moment. Here each request
holds a place for its model and for its principal while it is forwarded: past either
bound it is refused at once, with `Retry-After`, rather than queued behind the others
(OWASP API4: unrestricted resource consumption). A flood on one model leaves the other
models of that scorer their connections; a flood from one principal leaves the others
their share of every model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.errors import ModelBusy, TooManyInFlight


class Bulkheads:
    def __init__(self, *, per_model: int, per_principal: int) -> None:
        self.per_model = per_model
        self.per_principal = per_principal
        self._models: Counter[str] = Counter()
        self._principals: Counter[str] = Counter()

    @contextmanager
    def hold(self, model: str, principal: str) -> Iterator[None]:
        """A place for one forwarded request, or 429 (this principal) / 503 (this model)."""
        if self._principals[principal] >= self.per_principal:
            raise TooManyInFlight(
                f"at most {self.per_principal} requests in flight per caller",
                reason="bulkhead_principal",
            )
        if self._models[model] >= self.per_model:
            raise ModelBusy(
                f"at most {self.per_model} requests in flight to this model",
                reason="bulkhead_model",
            )
        self._principals[principal] += 1
        self._models[model] += 1
        try:
            yield
        finally:
            self._release(self._principals, principal)
            self._release(self._models, model)

    @staticmethod
    def _release(counts: Counter[str], key: str) -> None:
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]  # no entry per caller that is not in flight

    def in_flight(self, model: str | None = None) -> int:
        return self._models[model] if model is not None else sum(self._models.values())
