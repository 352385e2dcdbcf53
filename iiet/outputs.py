"""Output paths of the commands: checked for writability before any work, written atomically.

Every command that writes results (``eval``, ``bench``, ``influence``, ``plan``, ``plot``, ``tokenizer-train``,
``data-prepare``, ``train``) calls ``check_writable`` on its output before it loads a model or reads data, so a
read-only or misspelt path fails in a second with one line instead of after an hour of work. ``check_writable``
creates nothing (a failed command leaves no empty directory behind); results are then written with
``atomic_write`` / ``atomic_file``: into a temporary file beside the target, renamed into place when complete, so an
interrupted command never leaves a half-written result where a complete one was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from iiet.errors import IIETError


def check_writable(path: str | Path, option: str, kind: str = "dir") -> Path:
    """Raise ``IIETError`` unless ``path`` (a ``kind`` = "dir" or "file" to write) can be created or written.

    ``option`` names the flag in the message (e.g. ``--output_dir``). Nothing is left behind: the check writes and
    deletes one probe file in the nearest existing directory (``os.access`` is no help when running as root).
    """
    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    fix = f"choose a location you can write to ({option} PATH)"
    if existing == path:
        if kind == "dir" and not path.is_dir():
            raise IIETError(f"{option} {str(path)!r} exists and is not a directory; {fix}.")
        if kind == "file" and path.is_dir():
            raise IIETError(f"{option} {str(path)!r} is a directory; give a file name ({option} FILE).")
    elif not existing.is_dir():
        raise IIETError(f"{option} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a directory; {fix}.")
    directory = existing if existing.is_dir() else existing.parent
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".iiet-write-probe-", dir=directory)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise IIETError(f"{option} {str(path)!r} is not writable ({error.strerror} in {str(directory)!r}); {fix}.") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, on failure it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result gets the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(path: str | Path, content: str | bytes) -> Path:
    """Write ``content`` (text or bytes) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
    return Path(path)


def atomic_savefig(figure, path: str | Path, **options) -> Path:
    """``figure.savefig`` to ``path`` atomically (the format follows the suffix: png, pdf, svg)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", **options)
    return path
