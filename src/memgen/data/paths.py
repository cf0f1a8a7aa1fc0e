"""Where data sets live on disk, and the helpful error raised when they do not.

Search order for a data set called ``name``:

1. the explicit ``root`` argument, if given (and nothing else);
2. else, if the environment variable ``MEMGEN_DATA`` is set,
   ``$MEMGEN_DATA/<name>/`` and then ``$MEMGEN_DATA/`` itself;
3. else the Debian location ``/usr/share/datasets/<name>``
   (``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST there).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from memgen.errors import UserError

ENV_VAR = "MEMGEN_DATA"
DEBIAN_ROOT = Path("/usr/share/datasets")


class DataNotFoundError(FileNotFoundError, ValueError):
    """A data file or folder is missing; catchable as ValueError or FileNotFoundError."""


_SOURCES = {
    "mnist": "the four *-ubyte.gz files of http://yann.lecun.com/exdb/mnist/",
    "cifar10": "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extracted",
}


def install_hint(name: str) -> str:
    """One sentence telling the user how to get data set ``name``."""
    if name == "fashion-mnist":
        return (
            "install it with `apt-get install dataset-fashion-mnist` "
            f"(puts it in {DEBIAN_ROOT / name}) or set {ENV_VAR} to a folder holding it"
        )
    source = f" ({_SOURCES[name]})" if name in _SOURCES else ""
    return (
        f"put the standard files{source} in one of those folders, or set "
        f"{ENV_VAR} to a folder holding them (or a '{name}/' subfolder with them)"
    )


def candidate_dirs(
    name: str, root: str | os.PathLike | None = None, subfolder: str | None = None
) -> list[Path]:
    """The folders searched for data set ``name``, in order (see module docstring).

    With ``subfolder`` (e.g. "cifar-10-batches-py"), each folder d becomes d/subfolder, d.
    """
    if root is not None:
        dirs = [Path(root)]
    elif os.environ.get(ENV_VAR):
        dirs = [Path(os.environ[ENV_VAR]) / name, Path(os.environ[ENV_VAR])]
    else:
        dirs = [DEBIAN_ROOT / name]
    if subfolder is None:
        return dirs
    return [p for d in dirs for p in (d / subfolder, d)]


def _holds(directory: Path, filename: str | None, allow_gz: bool) -> bool:
    """Whether ``directory`` exists and holds ``filename`` (or ``filename.gz``)."""
    if not directory.is_dir():
        return False
    if filename is None:
        return True
    names = [filename, filename + ".gz"] if allow_gz else [filename]
    return any((directory / n).is_file() for n in names)


def resolve_root(
    name: str,
    root: str | os.PathLike | None = None,
    required: str | None = None,
    subfolder: str | None = None,
    allow_gz: bool = True,
) -> Path:
    """First folder of :func:`candidate_dirs` that exists and holds ``required``.

    ``required`` is a file name (``.gz`` also accepted when ``allow_gz``); None only
    asks that the folder exist. Raises DataNotFoundError naming the file, the folders
    searched and how to get the data.
    """
    dirs = candidate_dirs(name, root, subfolder)
    for d in dirs:
        if _holds(d, required, allow_gz):
            return d
    what = "data folder" if required is None else required + ("[.gz]" if allow_gz else "")
    looked = ", ".join(str(d) for d in dirs)
    raise DataNotFoundError(f"{name}: {what} not found (looked in {looked}); {install_hint(name)}")


def find_file(name: str, directory: Path, filename: str, allow_gz: bool = True) -> Path:
    """Path of ``filename`` (or ``filename.gz``) in ``directory``; DataNotFoundError if absent."""
    options = [filename, filename + ".gz"] if allow_gz else [filename]
    for option in options:
        path = directory / option
        if path.is_file():
            return path
    shown = filename + ("[.gz]" if allow_gz else "")
    hint = install_hint(name)
    raise DataNotFoundError(f"{name}: {shown} not found (looked in {directory}); {hint}")


def uint8_to_unit(x: np.ndarray) -> np.ndarray:
    """Map uint8 pixels to float32 in [-1, 1] by v / 127.5 - 1 (0 -> -1, 255 -> 1 exactly)."""
    if x.dtype != np.uint8:
        raise UserError(f"expected uint8 pixels, got dtype {x.dtype}")
    return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
