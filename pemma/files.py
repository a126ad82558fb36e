"""Files written atomically (a crash leaves the old file or none, never half of one), JSON, torch states."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a team's shared folder needs the umask's
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    write_atomic(Path(path), lambda tmp: torch.save(state, tmp))
    record_digest(Path(path))


def save_json(obj: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))

    write_atomic(Path(path), write)


def load_state(path: Path) -> dict[str, Any]:
    """A torch state, verified against its recorded digest (CorruptFile names the file otherwise)."""
    verify(Path(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CorruptFile(f"{path}: unreadable ({type(err).__name__}: {str(err)[:200]})") from err


def discard(path: Path) -> None:
    Path(path).unlink(missing_ok=True)
    digest_file(path).unlink(missing_ok=True)
