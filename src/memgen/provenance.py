"""Where an output came from: the command line, the versions, the git commit and the inputs.

:func:`gather` makes the ``provenance`` block that ``memgen classify``'s summary.json, a
sweep's provenance.json and its report.html record. Nothing here decides a number, and
nothing here enters a stage's cache key: a key hashes the settings a stage reads and its
inputs' content, never how, where or by which memgen it was run.

Only the standard library is imported (``memgen --help`` reads the versions without
importing torch).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

from memgen._version import __version__

GIT_TIMEOUT_S = 2.0  # each git call; a slower or missing git gives git_commit None
_CHUNK = 2**20  # bytes hashed per read


def gather(inputs: dict | None = None, argv: Sequence[str] | None = None) -> dict:
    """{command, argv, memgen, git_commit, git_dirty, python, torch, numpy, inputs}.

    argv: the command line as run (default ``sys.argv``); ``command`` is it as one shell
    line with the program's file name only. inputs: name → :func:`file_record` (or any
    JSON-able record, e.g. a data set's content fingerprint)."""
    argv = [str(a) for a in (sys.argv if argv is None else argv)]
    return {"command": command_line(argv), "argv": argv, "memgen": __version__,
            "git_commit": git_commit(), "git_dirty": git_dirty(),
            "python": platform.python_version(),
            "torch": package_version("torch"), "numpy": package_version("numpy"),
            "inputs": dict(inputs or {})}


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one shell-quoted line, its program shortened to the file name."""
    if not argv:
        return ""
    return shlex.join([Path(argv[0]).name, *argv[1:]])


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read a chunk at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: str | Path, shape: Iterable[int] | None = None) -> dict:
    """{path (absolute), sha256 of the file's bytes, bytes, shape}; shape: the array as
    read (None for a file that holds no array, such as a config)."""
    path = Path(path)
    return {"path": str(path.resolve()), "sha256": file_sha256(path),
            "bytes": path.stat().st_size, "shape": None if shape is None else list(shape)}


def shards_record(source: str | Path, shards: Iterable[tuple[Path, Sequence[int]]]) -> dict:
    """A set stored as several files (a folder or glob of shards): {path, shape of the
    whole set, files: one :func:`file_record` per shard, in reading order}."""
    files = [file_record(path, shape) for path, shape in shards]
    rows = sum(f["shape"][0] for f in files)
    return {"path": str(source), "shape": [rows, *files[0]["shape"][1:]] if files else None,
            "files": files}


def git_commit() -> str | None:
    """HEAD of the git checkout memgen was imported from; None when memgen is not a
    tracked file of a checkout (an installed wheel), or git is missing or too slow."""
    package = Path(__file__).resolve().parent
    if _git(package, "ls-files", "--error-unmatch", "__init__.py") is None:
        return None
    return _git(package, "rev-parse", "HEAD")


def git_dirty() -> bool | None:
    """True when memgen's own files differ from that commit (the commit alone would then
    not reproduce the result); None when there is no checkout or git cannot tell."""
    package = Path(__file__).resolve().parent
    if git_commit() is None:
        return None
    done = _run_git(package, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return None if done is None else bool(done.stdout.strip())


def _git(cwd: Path, *args: str) -> str | None:
    """git's answer (stripped), or None when it failed or said nothing."""
    done = _run_git(cwd, *args)
    return None if done is None else done.stdout.strip() or None


def _run_git(cwd: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):  # no git, no such folder, timed out
        return None
    return done if done.returncode == 0 else None


def package_version(name: str) -> str | None:
    """The version of an imported module (as imported), else of the installed package."""
    module = sys.modules.get(name)
    if getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(record: dict) -> str:
    """One line for logs: memgen's version and commit, Python, torch and numpy."""
    commit = record.get("git_commit")
    where = (f"git {commit[:12]}{' with local changes' if record.get('git_dirty') else ''}"
             if commit else "no git commit")
    return (f"memgen {record['memgen']} ({where})"
            f", Python {record['python']}, torch {record['torch']}, numpy {record['numpy']}")
