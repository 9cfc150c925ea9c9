"""Retry backoff: exponential with jitter, as a small policy object.

The delay before retry number ``n`` (``n = retry_count + 1``) is drawn
uniformly from ``[d/2, d]`` where ``d = min(max_ms, base_ms * factor**(n-1))``
("equal jitter"): never less than half the exponential step, so retries really
back off, and never all at once, so a burst of failures does not come back as
a burst.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from northpole.core.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with equal jitter.

    Attributes:
        base_ms: Ceiling of the first retry's delay.
        factor: Growth per retry.
        max_ms: Ceiling of any delay.
    """

    base_ms: int = 1_000
    factor: float = 2.0
    max_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.base_ms < 0:
            raise InvalidInput("must be >= 0", field="base_ms")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise InvalidInput("must be a finite number >= 1", field="factor")
        if self.max_ms < self.base_ms:
            raise InvalidInput("must be >= base_ms", field="max_ms")

    def ceiling_ms(self, retry_number: int) -> int:
        """Return ``d`` for retry ``retry_number`` (1 for the first retry)."""
        exponent = max(0, retry_number - 1)
        if self.base_ms == 0:
            return 0
        # Compare in logarithms first so a huge exponent cannot overflow a float.
        if self.factor > 1 and exponent * math.log(self.factor) >= math.log(
            self.max_ms / self.base_ms
        ):
            return self.max_ms
        return int(min(self.max_ms, self.base_ms * self.factor**exponent))

    def delay_ms(self, retry_number: int, rng: random.Random) -> int:
        """Return the jittered delay before retry ``retry_number``, in ``[d/2, d]``."""
        ceiling = self.ceiling_ms(retry_number)
        return rng.randint((ceiling + 1) // 2, ceiling)
