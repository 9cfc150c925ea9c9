"""The Gift ID service: builds the generator from settings and owns its lifecycle.

Start-up order: take the workshop id (lock file or lease), load the high-water
mark, wait out what an earlier process reserved if that is short, then report
ready. A lost lease (cluster edition) stops IDs at once; the service then takes
a new workshop id and resumes. Shutdown releases the workshop id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from northpole.core.app import Readiness
from northpole.core.clock import Clock, SystemClock
from northpole.core.errors import Unavailable
from northpole.core.lifecycle import stop_tasks
from northpole.core.logging import get_logger
from northpole.core.settings import IdGenSettings
from northpole.idgen.allocator import LockFileAllocator, WorkshopIdAllocator, WorkshopLease
from northpole.idgen.collisions import CollisionDetector
from northpole.idgen.generator import IdGenerator
from northpole.idgen.metrics import IdGenMetrics
from northpole.idgen.snowflake import DecodedId, decode
from northpole.idgen.watermark import FileWatermark

_log = get_logger(__name__)

#: Backoff between attempts to take a new workshop id after the lease was lost.
REACQUIRE_FIRST_DELAY_S = 0.1
REACQUIRE_MAX_DELAY_S = 2.0


@dataclass(frozen=True, slots=True)
class IdGenHealth:
    """What ``GET /api/v1/gift-id/health`` reports."""

    status: str
    workshop_id: int | None
    assigned_by: str | None
    epoch_ms: int
    clock_behind_ms: int


class IdGenService:
    """The Gift ID part: a generator, its workshop lease and its metrics.

    Args:
        settings: The ``idgen`` settings group.
        data_dir: The embedded edition's data directory (lock and watermark files).
        registry: Where the part's metrics go.
        clock: The clock (default: system clock).
        allocator: Where the workshop id comes from (default: lock file in ``data_dir``).
    """

    name = "idgen"

    def __init__(
        self,
        settings: IdGenSettings,
        *,
        data_dir: Path,
        registry: CollectorRegistry,
        clock: Clock | None = None,
        allocator: WorkshopIdAllocator | None = None,
    ) -> None:
        self.settings = settings
        self.directory = data_dir / "idgen"
        self.clock = clock or SystemClock()
        self.metrics = IdGenMetrics.register(registry)
        self.allocator = allocator or LockFileAllocator(settings.workshop_id, self.directory)
        self._detector = CollisionDetector(every=settings.collision_sample_every)
        self._lease: WorkshopLease | None = None
        self._generator: IdGenerator | None = None

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Hold a workshop id and a generator while the app runs.

        If the lease is lost (a cluster-edition lease can expire), IDs stop at
        once and the service takes a new workshop id, possibly another one.
        """
        await self._install(await self.allocator.acquire())
        supervisor = asyncio.create_task(self._supervise(), name="idgen-lease")
        try:
            yield
        finally:
            await stop_tasks(supervisor)
            await self._uninstall()

    async def _install(self, lease: WorkshopLease) -> None:
        """Build the generator for ``lease``'s workshop id and start issuing with it."""
        try:
            generator = IdGenerator(
                lease.workshop_id,
                epoch_ms=self.settings.epoch_ms,
                clock=self.clock,
                clock_tolerance_ms=self.settings.clock_tolerance_ms,
                watermark=FileWatermark(self.directory / f"workshop-{lease.workshop_id}.watermark"),
                reserve_ms=self.settings.reserve_ms,
                on_clock_backwards=self.metrics.clock_went_back,
            )
            max_wait = self.settings.reserve_ms + self.settings.clock_tolerance_ms
            if not await asyncio.to_thread(generator.catch_up, max_wait):
                _log.warning(
                    "clock is behind the stored ID watermark; refusing IDs until it catches up",
                    behind_ms=generator.behind_ms(),
                )
        except BaseException:
            await self.allocator.release(lease)
            raise
        self._lease, self._generator = lease, generator
        self.metrics.workshop.labels(lease.source).set(lease.workshop_id)
        _log.info("gift id generator ready", workshop_id=lease.workshop_id, source=lease.source)

    async def _uninstall(self) -> None:
        """Stop issuing and give the workshop id back."""
        lease = self._lease
        self._generator = None
        self._lease = None
        if lease is not None:
            self.metrics.workshop.labels(lease.source).set(-1)
            await self.allocator.release(lease)

    async def _supervise(self) -> None:
        """Replace a lost workshop lease with a new one, for as long as the service runs."""
        while (lease := self._lease) is not None:
            reason = await lease.lost()
            if self._lease is not lease:
                continue
            _log.warning(
                "workshop id lease lost; no IDs until a new one is held",
                workshop_id=lease.workshop_id,
                reason=reason,
            )
            self.metrics.leases_lost.inc()
            await self._uninstall()
            await self._install(await self._reacquire())

    async def _reacquire(self) -> WorkshopLease:
        """Acquire a workshop id, retrying with backoff while none can be had."""
        delay = REACQUIRE_FIRST_DELAY_S
        while True:
            try:
                return await self.allocator.acquire()
            except Unavailable as exc:
                _log.warning("no workshop id yet", error=exc.message, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REACQUIRE_MAX_DELAY_S)

    def router(self) -> APIRouter:
        """Return the HTTP routes of this part."""
        from northpole.idgen.api import build_router

        return build_router(self)

    def readiness(self) -> Readiness:
        """Ready when a workshop id is held and the clock is not behind the last ID."""
        if self._generator is None or self._lease is None:
            return Readiness(False, "no workshop id held")
        behind = self._generator.behind_ms()
        if behind > self.settings.clock_tolerance_ms:
            return Readiness(False, f"clock is {behind} ms behind the last issued ID")
        return Readiness(True)

    def generate(self, count: int = 1) -> list[range]:
        """Issue ``count`` IDs, as runs of consecutive IDs (see ``IdGenerator.next_runs``).

        Raises:
            Unavailable: Not started, lease lost, or the clock is too far behind.
            InvalidInput: ``count`` < 1.
        """
        generator, lease = self._generator, self._lease
        if generator is None or lease is None:
            raise Unavailable("the gift id generator is not running")
        lease.check()
        runs = generator.next_runs(count)
        # Checked again after: every ID handed out was made while the lease held,
        # even if the process was paused between the first check and the clock read.
        lease.check()
        self.metrics.generated.inc(count)
        for run in runs:
            if hits := self._detector.observe(run):
                self.metrics.collisions.inc(hits)
                _log.error("duplicate gift id detected", hits=hits, gift_id=str(run[0]))
        return runs

    def generate_list(self, count: int) -> list[int]:
        """Issue ``count`` IDs as a flat list (for other parts that need ids)."""
        return [gift_id for run in self.generate(count) for gift_id in run]

    def decode(self, gift_id: int) -> DecodedId:
        """Decode an ID against this service's epoch."""
        return decode(gift_id, epoch_ms=self.settings.epoch_ms)

    def health(self) -> IdGenHealth:
        """Report status, workshop id and how it was assigned."""
        generator, lease = self._generator, self._lease
        ready = self.readiness().ready
        return IdGenHealth(
            status="ok" if ready else "unavailable",
            workshop_id=lease.workshop_id if lease else None,
            assigned_by=lease.source if lease else None,
            epoch_ms=self.settings.epoch_ms,
            clock_behind_ms=generator.behind_ms() if generator else 0,
        )
