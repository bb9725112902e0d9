"""One nightly run at a time: an exclusive fcntl lock that the kernel frees when its holder dies."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from dam_loop.cli import LockedError
from dam_loop.provenance import utc_iso


class FileLock:
    """An exclusive, non-blocking fcntl lock on ``path``; released on close or when the process dies (even SIGKILL).

    >>> with FileLock(Path("loop_work/nightly.lock")):
    ...     ...  # raises LockedError at once if another process holds it
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = self.path.read_text(errors="replace").strip() if self.path.exists() else ""
                raise LockedError(f"{self.path} is held by another run ({holder or 'unknown holder'})") from exc
            raise
        # Record who holds it (informational only; the lock itself is the flock).
        os.ftruncate(fd, 0)
        os.write(fd, f"pid={os.getpid()} since={utc_iso()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
