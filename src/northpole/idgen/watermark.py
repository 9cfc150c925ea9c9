"""The high-water mark port: how a generator survives a restart with the clock set back.

A generator reserves time ahead of itself: before it issues any ID stamped at
or after the stored mark, it stores a new mark ``reserve_ms`` further on. So every
ID ever issued is stamped strictly before the stored mark, and a restarted
generator refuses to issue anything stamped before it. Storing costs one fsync
per reservation window (one second by default), not one per ID.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

from northpole.core.errors import ConfigurationError, Unavailable


class Watermark(Protocol):
    """Where a generator keeps the time before which all its IDs were issued."""

    def load(self) -> int:
        """Return the stored mark in Unix ms, or 0 if none was ever stored."""
        ...

    def store(self, until_ms: int) -> None:
        """Durably record that no ID at or after ``until_ms`` has been issued yet."""
        ...


class MemoryWatermark:
    """A watermark that lives as long as the object: for tests and for restarts in-process."""

    def __init__(self, initial_ms: int = 0) -> None:
        self._value = initial_ms
        self._lock = threading.Lock()
        self.stores = 0

    def load(self) -> int:
        """Return the mark."""
        with self._lock:
            return self._value

    def store(self, until_ms: int) -> None:
        """Record the mark."""
        with self._lock:
            self._value = until_ms
            self.stores += 1


class FileWatermark:
    """A watermark in a small text file, replaced atomically and fsynced on every store."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        """Return the stored mark, 0 if the file does not exist.

        Raises:
            ConfigurationError: The file exists but does not hold a mark; starting
                anyway could reissue IDs, so the operator must look.
        """
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the ID watermark {self.path}: {exc}") from exc
        if not text.isdigit():
            raise ConfigurationError(
                f"the ID watermark {self.path} is corrupt ({text[:40]!r}); "
                "restore it or remove it only if the clock is known to be right"
            )
        return int(text)

    def store(self, until_ms: int) -> None:
        """Write the mark to a temporary file, fsync it, and rename it over the old one.

        Raises:
            Unavailable: The disk refused the write; no ID past the old mark is issued.
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"{until_ms}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise Unavailable(f"cannot store the ID watermark {self.path}: {exc}") from exc
