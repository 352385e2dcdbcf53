"""One writer per run directory: ``<output_dir>/.iiet.lock``.

A run holds an exclusive ``flock`` on the lock file for its whole life and writes its owner (pid, host, start time)
into it for the message a second run gets. The kernel drops the lock when the owner dies, however it dies (even
``kill -9``), so a lock left by a dead run is stale by construction and the next run simply takes it over. Where the
file system has no ``flock`` (some network mounts), the owner record decides: a live pid on this host, or any pid on
another host, holds the directory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from iiet.errors import IIETError

LOCK_FILE = ".iiet.lock"


class RunLock:
    """The held lock of one run directory; ``release()`` (or process exit) frees it."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self.descriptor: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._read_owner()
            self.release()
            raise IIETError(self._refusal(output_dir, owner)) from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            owner = self._read_owner()  # no flock here: trust a live owner record
            if owner and _alive(owner):
                self.release()
                raise IIETError(self._refusal(output_dir, owner)) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(self.descriptor, 0)
        os.pwrite(self.descriptor, (json.dumps(record) + "\n").encode(), 0)

    def _read_owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    @staticmethod
    def _refusal(output_dir, owner: dict | None) -> str:
        who = (f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}" if owner
               else "another process")
        return (f"run.output_dir {str(output_dir)!r} is in use by another iiet run ({who}); wait for it to finish or "
                "stop it, or choose another --run.output_dir.")

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing drops the flock; the file stays (deleting it would race)
            self.descriptor = None


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # cannot tell from here
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True
