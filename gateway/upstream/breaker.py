"""A circuit breaker per upstream (SECURITY-CATALOG: upstreams; OWASP API10).

    closed ──(failure_threshold consecutive failures)──► open
      ▲                                                   │ reset_s later
      └──── trial succeeds ──── half-open (one trial) ◄───┘
                                   │ trial fails → open again

While open, requests for that scorer are refused at once with 503 and ``Retry-After``,
instead of each waiting for a connect timeout or piling onto a scorer that is failing:
the gateway stays fast and healthy, and the scorer gets room to recover. Failures are
the scorer's faults only (connection refused, timeout, 5xx, malformed answers); a 4xx
for the client's own bad input is a success for the breaker.

State is per gateway replica and in memory: each replica judges the scorers it sees.
Hand-written (~70 lines) rather than a library: the maintained Python breakers are
synchronous (pybreaker) or bring storage layers we do not need, and this one must be
typed and free of locks on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gateway.errors import CircuitOpen

State = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    failure_threshold: int = 5
    reset_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    state: State = "closed"
    failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = field(default=False, repr=False)
    on_change: Callable[[State], None] | None = field(default=None, repr=False)

    def before(self) -> None:
        """Let a request through, or raise CircuitOpen."""
        if self.state == "closed":
            return
        waited = self.clock() - self.opened_at
        if self.state == "open":
            if waited < self.reset_s:
                raise CircuitOpen(self.reset_s - waited)
            self._set("half_open")
        if self.trial_in_flight:  # half-open: exactly one trial at a time
            raise CircuitOpen(1.0)
        self.trial_in_flight = True

    def success(self) -> None:
        self.failures = 0
        self.trial_in_flight = False
        if self.state != "closed":
            self._set("closed")

    def failure(self) -> None:
        self.trial_in_flight = False
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            if self.state != "open":
                self._set("open")

    def release(self) -> None:
        """The request ended without a verdict (cancelled): free the trial slot."""
        self.trial_in_flight = False

    def _set(self, state: State) -> None:
        self.state = state
        if self.on_change is not None:
            self.on_change(state)
