"""The WorkshopIdAllocator port: how a generator gets a workshop id nobody else uses.

Two live generators with one workshop id could issue the same ID, so every
generator holds its id through a lease for as long as it issues IDs:

* :class:`LockFileAllocator` (embedded edition): the id comes from settings and
  is guarded by an exclusive ``flock`` on a file in the data directory, so two
  processes on one data directory cannot use one id. The kernel drops the lock
  when the process dies, even by ``kill -9``.
* :class:`northpole.coord.workshop.EtcdWorkshopAllocator` (cluster edition)
  leases the lowest free id from etcd; its lease can be lost (expiry, partition,
  a paused process), and then :meth:`WorkshopLease.lost` returns so the service
  can take another id.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import Protocol

from northpole.core.errors import WorkshopIdUnavailable
from northpole.idgen.snowflake import check_workshop_id


class WorkshopLease(Protocol):
    """A held workshop id."""

    @property
    def workshop_id(self) -> int:
        """The id this lease grants."""
        ...

    @property
    def source(self) -> str:
        """How it was assigned, for example ``settings`` or ``etcd``."""
        ...

    def check(self) -> None:
        """Raise :class:`WorkshopIdUnavailable` if the lease can no longer be trusted."""
        ...

    async def lost(self) -> str:
        """Wait until the lease is lost or released; return why."""
        ...


class WorkshopIdAllocator(Protocol):
    """Hands out workshop ids, at most one live holder per id."""

    async def acquire(self) -> WorkshopLease:
        """Take a workshop id; raise :class:`WorkshopIdUnavailable` if none can be had."""
        ...

    async def release(self, lease: WorkshopLease) -> None:
        """Give the id back."""
        ...


class FileLease:
    """A workshop id held through an open, exclusively locked file."""

    def __init__(self, workshop_id: int, path: Path, fd: int) -> None:
        self._workshop_id = workshop_id
        self.path = path
        self._fd: int | None = fd
        self._closed = asyncio.Event()

    @property
    def workshop_id(self) -> int:
        """The id this lease grants."""
        return self._workshop_id

    @property
    def source(self) -> str:
        """Always ``settings``: the operator chose the id."""
        return "settings"

    def check(self) -> None:
        """Raise if the lock was released; a held flock cannot be lost otherwise."""
        if self._fd is None:
            raise WorkshopIdUnavailable(f"workshop id {self._workshop_id} was released")

    async def lost(self) -> str:
        """Wait until the lock is released (a held flock is never lost otherwise)."""
        await self._closed.wait()
        return "released"

    def close(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._closed.set()


class LockFileAllocator:
    """Grant the configured workshop id if no other process on this data directory holds it.

    Args:
        workshop_id: The id from settings (0-1023).
        directory: Where lock files live (``<data_dir>/idgen``).
    """

    def __init__(self, workshop_id: int, directory: Path) -> None:
        self.workshop_id = check_workshop_id(workshop_id)
        self.directory = directory

    def lock_path(self) -> Path:
        """Return the lock file of this allocator's workshop id."""
        return self.directory / f"workshop-{self.workshop_id}.lock"

    async def acquire(self) -> FileLease:
        """Lock the id's file without blocking.

        Raises:
            WorkshopIdUnavailable: Another live process holds the id.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.lock_path()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkshopIdUnavailable(
                f"workshop id {self.workshop_id} is in use by another process (pid {holder}) "
                f"on {self.directory}; choose another id or stop that process",
                field="workshop_id",
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return FileLease(self.workshop_id, path, fd)

    async def release(self, lease: WorkshopLease) -> None:
        """Unlock the id's file."""
        if isinstance(lease, FileLease):
            lease.close()
