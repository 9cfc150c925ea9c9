"""Readiness: whether a part can take traffic, and why not.

Its own light module so that code which only reports readiness (a part's
service used by a worker process, say) does not import the web framework.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether a part can take traffic, and why not."""

    ready: bool
    detail: str = "ok"
