"""What identifies a model: its source record and content hashes.

Each loaded model carries its ``ModelSource``: the kind of source, its path and a sha256
of its content (the checkpoint's bytes; the training set's array for the exact denoiser;
the TorchScript file; every file of a diffusers folder; the reference checkpoint and its
config), computed on first use. ``memgen generate`` records it with every shard, so a
shard drawn from other weights is never taken for this model's. ``denoiser_sha256``
fingerprints a denoiser built in Python (its tensors and settings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from memgen.provenance import file_sha256


@dataclass(frozen=True, eq=False)
class ModelSource:
    """Where a model came from: ``kind`` (a name of
    ``memgen.diffusion.sources.SOURCES``), its ``path`` (None for an array
    given in memory) and ``sha256``, the hash of its content, computed on first use."""

    kind: str
    path: str | None
    content: Callable[[], str] = dataclasses.field(repr=False)  # returns the sha256

    @cached_property
    def sha256(self) -> str:
        return self.content()

    def identity(self) -> dict:
        """What identifies the model (not where it lies): {"kind", "sha256"}."""
        return {"kind": self.kind, "sha256": self.sha256}

    def label(self) -> str:
        """The model in a message: "torchscript eps.pt", "exact denoiser of (6, 1, 8, 8)"."""
        return f"{self.kind} {self.path}" if self.path else f"{self.kind} model"


def folder_sha256(path) -> str:
    """sha256 over every file of a folder: relative paths (sorted) and their bytes' hashes."""
    h = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(root).as_posix()} {file_sha256(file)}\n".encode())
    return h.hexdigest()


def array_sha256(array) -> str:
    """sha256 of an array's dtype, shape and bytes (C order); a tensor is read on the CPU."""
    h = hashlib.sha256()
    _feed_array(h, array)
    return h.hexdigest()


def _feed_array(h, array) -> None:
    if isinstance(array, torch.Tensor):
        t = array.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return
    a = np.ascontiguousarray(array)
    h.update(f"array {a.dtype.str} {a.shape}|".encode())
    h.update(a.tobytes())


def denoiser_sha256(denoiser) -> str:
    """A fingerprint of a denoiser built in Python: its class, tensors (a network's state
    dict), numbers and settings, walked through its attributes. Functions count by name
    only: for a model from a file, its ``ModelSource`` hash says more."""
    h = hashlib.sha256()
    _feed(h, denoiser, 0)
    return h.hexdigest()


def _feed(h, obj, depth: int) -> None:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        _feed_array(h, obj)
    elif isinstance(obj, torch.nn.Module):
        h.update(f"module {type(obj).__qualname__}|".encode())
        for key, value in obj.state_dict().items():
            h.update(f"{key}=".encode())
            _feed_array(h, value)
    elif obj is None or isinstance(obj, (bool, int, float, str, torch.dtype, torch.device)):
        h.update(f"{obj!r}|".encode())
    elif dataclasses.is_dataclass(obj):
        h.update(f"{obj!r}|".encode())  # schedules and configs: their fields
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}[".encode())
        for item in obj:
            _feed(h, item, depth + 1)
        h.update(b"]")
    elif isinstance(obj, dict):
        for key in sorted(obj, key=repr):
            h.update(f"{key!r}:".encode())
            _feed(h, obj[key], depth + 1)
    elif depth < 4 and hasattr(obj, "__dict__") and not _named(obj):
        h.update(f"object {type(obj).__qualname__}|".encode())
        for key in sorted(k for k in vars(obj) if not k.startswith("_")):  # not caches
            h.update(f"{key}=".encode())
            _feed(h, vars(obj)[key], depth + 1)
    else:  # a function, a class, or an object too deep to walk: its name
        name = getattr(obj, "__qualname__", type(obj).__qualname__)
        h.update(f"{getattr(obj, '__module__', '')}.{name}|".encode())


def _named(obj) -> bool:
    """Whether ``obj`` is a function or class, fingerprinted by name, not walked."""
    return inspect.isroutine(obj) or isinstance(obj, type)
