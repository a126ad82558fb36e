"""Portable results: save only what a method trained (safetensors), load it onto a fresh base.

The file records the names it holds and a digest of the frozen weights it was trained on top of,
so loading onto a different CT base, or into another method's model, fails with a clear error
instead of producing silently wrong outputs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pemma.files import CorruptFile, record_digest, verify, write_atomic


class PortableStateError(ValueError):
    """A saved trainable state that does not fit the model it is loaded into."""


def frozen_digest(model: nn.Module, trained: list[str]) -> str:
    """SHA-1 over the names and values of every parameter not in `trained` (the base under them)."""
    h = hashlib.sha1()
    keep = set(trained)
    for name, param in model.named_parameters():
        if name not in keep:
            h.update(name.encode())
            h.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def trained_state(model: nn.Module, trained: list[str]) -> dict[str, torch.Tensor]:
    """The parameters named in `trained`, detached on CPU: what a saved result holds."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().to("cpu").contiguous() for name in trained}


def save_trained(model: nn.Module, trained: list[str], path: Path, metadata: dict[str, str]) -> int:
    """Write the parameters named in `trained` to `path` atomically; returns the file's size in bytes."""
    state = trained_state(model, trained)
    meta = {**metadata, "frozen_digest": frozen_digest(model, trained)}
    write_atomic(Path(path), lambda tmp: save_file(state, tmp, metadata=meta))
    record_digest(Path(path))
    return Path(path).stat().st_size


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_trained(model: nn.Module, trained: list[str], path: Path) -> dict[str, str]:
    """Load a file written by save_trained into `model`, whose trainable names are `trained`.

    Refuses a file whose names or shapes differ from the model's trainable set, or that was trained
    on other frozen weights. Returns the file's metadata.
    """
    path = Path(path)
    try:
        verify(path)
    except CorruptFile as err:
        raise PortableStateError(str(err)) from err
    try:
        state = load_file(str(path))
        meta = read_metadata(path)
    except Exception as err:
        raise PortableStateError(f"{path}: not a readable safetensors file ({err})") from err
    missing = sorted(set(trained) - set(state))
    unexpected = sorted(set(state) - set(trained))
    if missing or unexpected:
        raise PortableStateError(
            f"{path}: does not match this model's trainable set "
            f"(method {meta.get('method', '?')}, backbone {meta.get('backbone', '?')}); "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    params = dict(model.named_parameters())
    wrong = [n for n in trained if params[n].shape != state[n].shape]
    if wrong:
        raise PortableStateError(
            f"{path}: shapes differ for {wrong[:3]} (e.g. {tuple(state[wrong[0]].shape)} in the file, "
            f"{tuple(params[wrong[0]].shape)} in the model): another model size or rank"
        )
    if meta.get("frozen_digest") != frozen_digest(model, trained):
        raise PortableStateError(
            f"{path}: was trained on top of different frozen weights (another CT base); "
            "load it onto the base it was trained with"
        )
    with torch.no_grad():
        for name in trained:
            params[name].copy_(state[name].to(params[name].device))
    return meta
