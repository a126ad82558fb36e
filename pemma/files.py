"""Files written atomically (a crash leaves the old file or none, never half of one), JSON, torch states."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FULL = 1 << 20
"""Free bytes below which a failed write is blamed on a full disk (torch and safetensors report it as
an iostream or I/O error, not as ENOSPC)."""


def write_atomic(path: Path, write) -> None:
    """`write(tmp)` into a temporary file beside `path`, then renamed onto it: a crash leaves the old
    file or none. A write that fails on a (nearly) full disk raises NoSpace naming `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise (no_space(err) or err) from err
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a team's shared folder needs the umask's
        write(tmp)
        os.replace(tmp, path)
    except Exception as err:
        full = no_space(err) or (NoSpace(str(path)) if shutil.disk_usage(path.parent).free < FULL else None)
        Path(tmp).unlink(missing_ok=True)
        if full is not None:
            raise NoSpace(str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NoSpace(Exception):
    """The disk (or quota) filled up while writing `path`: nothing more can be saved until space is
    freed. (Not an OSError: it crosses process boundaries by pickling, with its one argument.)"""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def __str__(self) -> str:
        return f"no space left on device while writing {self.path}"


def no_space(error: BaseException, store: str = "the MLflow store") -> NoSpace | None:
    """A NoSpace for an error that a full disk caused (an OSError ENOSPC or EDQUOT anywhere in its
    chain, or SQLite's 'database or disk is full'), naming the file; None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, NoSpace):
            return error
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(error.filename or "a file")
        if "database or disk is full" in str(error):
            return NoSpace(store)
        if "No space left on device" in str(error) or "os error 28" in str(error):  # Rust, C++ writers
            return NoSpace(getattr(error, "filename", None) or "a file")
        error = error.__cause__ or error.__context__
    return None


class CorruptFile(ValueError):
    """A file whose contents are not what was written (or cannot be read); the message names it."""


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def digest_file(path: Path) -> Path:
    """Where the sha256 of `path`, recorded when it was written, lives."""
    return Path(path).with_name(Path(path).name + ".sha256")


def record_digest(path: Path) -> None:
    value = digest(path)
    write_atomic(digest_file(path), lambda tmp: Path(tmp).write_text(value))


def verify(path: Path) -> None:
    """Raise CorruptFile if `path` differs from the digest recorded when it was written."""
    recorded = digest_file(path)
    if recorded.exists() and recorded.read_text().strip() != digest(path):
        raise CorruptFile(f"{path}: its contents differ from the sha256 recorded when it was written")


def save_state(state: dict[str, Any], path: Path) -> None:
    import torch

    write_atomic(Path(path), lambda tmp: torch.save(state, tmp))
    record_digest(Path(path))


def save_json(obj: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))

    write_atomic(Path(path), write)


def load_state(path: Path) -> dict[str, Any]:
    """A torch state, verified against its recorded digest (CorruptFile names the file otherwise)."""
    import torch

    verify(Path(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CorruptFile(f"{path}: unreadable ({type(err).__name__}: {str(err)[:200]})") from err


def discard(path: Path) -> None:
    Path(path).unlink(missing_ok=True)
    digest_file(path).unlink(missing_ok=True)
