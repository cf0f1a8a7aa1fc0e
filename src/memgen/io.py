"""Reading sample files and writing output folders atomically.

Sample files (README, “Sample files”): ``.npz`` with key ``samples`` — or a single array
under any key, the reference code's layout — or ``.npy``; never unpickled
(allow_pickle=False). One input contract, checked here for every command and the API:

* Vectors, N×D (embeddings, toy data): any finite real numbers, as float32 (uint8 → [-1, 1]
  as for images, memgen's long-standing rule).
* Images, N×C×H×W: floats in [-1, 1], with a tolerance of ``RANGE_TOLERANCE`` (1e-3) for
  rounding; uint8 in [0, 255] is converted (x / 127.5 − 1). A float set inside [-1, 1]
  whose minimum is ≥ 0 and maximum > 0.5 looks like [0, 1] and is refused too (an image
  set in memgen's range has dark pixels below 0): ``--input-range -1,1`` takes it as it is.
  Any other range or dtype — floats in [0, 255] or beyond [-1, 1], uint16, other
  integers, bool — is refused with a line naming the dtype and range found and the flag.
* ``--input-range LO,HI`` (``input_range=(LO, HI)``) converts explicitly: a set of any real
  dtype whose values lie in [LO, HI] (same tolerance, of the half-width) maps to [-1, 1] by
  x ↦ 2 (x − LO) / (HI − LO) − 1 (so 0,255 is uint8's conversion, for floats, uint16 or
  ints that fit 0..255; 0,1 for [0, 1] floats or bool); values outside it are refused.
* N×H×W (and 5+ dimensions) are refused: give grey images as N×1×H×W (``x[:, None]``)
  or vectors as N×D — memgen does not guess which.
* NaN or Inf anywhere is refused.

Sets read together (training, evaluated, synthetic, held-out) whose ranges clearly differ
are refused by :func:`check_ranges` unless the caller allows it (``--allow-range-mismatch``).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from memgen._version import __version__
from memgen.errors import UserError

SAMPLES_KEY = "samples"


def write_reference_layout(path: str | Path, samples: np.ndarray) -> Path:
    """Write a sample set as the paper authors' code stores one (their ``run_generate.py``:
    ``np.savez_compressed(path, samples=x)``, x float32 (N, C, H, W) in [-1, 1], the clipped
    output of their DDPM sampler), atomically. Their ``run_classify.py`` reads every
    ``<K>.npz`` of its ``--eval-path`` and ``--synth-path`` folders (sorted by the integer
    K of the name), key ``samples``."""
    path = Path(path)
    with atomic_file(path) as tmp:
        np.savez_compressed(tmp, samples=np.asarray(samples, dtype=np.float32))
    return path


IMAGE_RANGE = (-1.0, 1.0)
RANGE_TOLERANCE = 1e-3  # of a range's half-width: rounding, float16 storage
RANGE_FLAG = "--input-range {}"  # how a message names the conversion (the API: input_range)


def load_samples(path: str | Path, name: str = "samples",
                 input_range: tuple[float, float] | None = None,
                 flag: str = RANGE_FLAG, *, own: bool = False) -> np.ndarray:
    """Load a sample set as float32 (N, ...) under the input contract (module docstring);
    ``name`` labels errors, ``input_range`` converts explicitly, ``flag`` is how the
    messages name that conversion ("{}" becomes LO,HI). own: a set memgen wrote itself
    (generate's output, images clipped to [-1, 1]), read without the guess that images
    above 0 were meant as [0, 1] — a model's samples may all be bright."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{name}: no such file {path}")
    try:
        array = _read_array(path)
    except ValueError as err:
        raise UserError(f"{name}: {path}: {err}") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise UserError(f"{name}: cannot read {path} ({err})") from None
    return validate_samples(array, name, input_range, flag, own=own)


_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}


def _read_array(path: Path) -> np.ndarray:
    if path.suffix not in _MAGIC:
        raise UserError("expected a .npz or .npy file")
    with path.open("rb") as f:
        if not f.read(6).startswith(_MAGIC[path.suffix]):
            raise UserError(f"not a valid {path.suffix} file")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if SAMPLES_KEY in keys:
            return archive[SAMPLES_KEY]
        if len(keys) == 1:
            return archive[keys[0]]
        raise UserError(f"no key {SAMPLES_KEY!r} among {keys}, and more than one array")


def validate_samples(array: np.ndarray, name: str = "samples",
                     input_range: tuple[float, float] | None = None,
                     flag: str = RANGE_FLAG, *, own: bool = False) -> np.ndarray:
    """float32 copy of a real (N, D) or (N, C, H, W) array with N ≥ 1 samples of ≥ 1
    feature, finite, under the input contract (module docstring): images in [-1, 1]
    (uint8 converted), or converted from ``input_range``; own: see :func:`load_samples`."""
    array = np.asarray(array)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                     or array.dtype == bool):
        raise UserError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise UserError(f"{name}: expected real numbers, got dtype {array.dtype}")
    if array.ndim < 2:
        raise UserError(f"{name}: expected shape (N, D) or (N, C, H, W), got {array.shape}")
    if array.shape[0] == 0:
        raise UserError(f"{name}: the set is empty")
    if array[0].size == 0:
        raise UserError(f"{name}: the samples have no features (shape {array.shape})")
    if array.ndim not in (2, 4):
        hint = (f"grey images as (N, 1, H, W) (x[:, None]) or vectors as (N, D) "
                f"(x.reshape(len(x), -1))" if array.ndim == 3 else
                "vectors as (N, D) (x.reshape(len(x), -1))")
        raise UserError(f"{name}: shape {array.shape} is neither vectors (N, D) nor images "
                        f"(N, C, H, W); give {hint}")
    if input_range is not None:
        return _convert(array, name, input_range)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 127.5 - 1.0
    if array.ndim == 4 and not np.issubdtype(array.dtype, np.floating):
        lo, hi = _finite_range(array, name)
        raise UserError(f"{name}: {array.dtype} images with values in [{lo:g}, {hi:g}]; "
                        f"memgen takes images as floats in [-1, 1] or uint8: "
                        f"{_conversion_hint(lo, hi, flag)}")
    lo, hi = _finite_range(array, name)  # before the cast: float64 beyond float32 is not NaN
    _check_float32(lo, hi, name)
    array = array.astype(np.float32)
    if array.ndim == 4:
        _check_image_range(array.dtype, lo, hi, name, flag, own)
    return array


def _check_float32(lo: float, hi: float, name: str) -> None:
    """UserError for values that float32 (memgen's working precision) cannot hold."""
    big = float(np.finfo(np.float32).max)
    if max(abs(lo), abs(hi)) > big:
        raise UserError(f"{name}: values in [{lo:.4g}, {hi:.4g}] exceed float32's range "
                        f"(±{big:.4g}); rescale them")


def _finite_range(array: np.ndarray, name: str) -> tuple[float, float]:
    """(min, max) of a finite array as floats; UserError for NaN or Inf."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise UserError(f"{name}: contains NaN or Inf")
    return float(array.min()), float(array.max())


def _check_image_range(dtype, lo: float, hi: float, name: str, flag: str,
                       own: bool = False) -> None:
    """Images in [-1, 1] (tolerance RANGE_TOLERANCE) that do not look like [0, 1] (unless
    memgen wrote them: ``own``)."""
    tol = RANGE_TOLERANCE
    found = f"{name}: {dtype} images with values in [{lo:.4g}, {hi:.4g}]"
    if lo < -1 - tol or hi > 1 + tol:
        raise UserError(f"{found}, outside [-1, 1]: {_conversion_hint(lo, hi, flag)}")
    if lo >= 0 and hi > 0.5 and not own:
        raise UserError(f"{found} look like [0, 1], not memgen's [-1, 1]: give "
                        f"{flag.format('0,1')} to convert them (or {flag.format('-1,1')} "
                        "to take them as they are)")


def _conversion_hint(lo: float, hi: float, flag: str) -> str:
    """What to do with images in [lo, hi]: the --input-range that fits, or rescaling."""
    tol = RANGE_TOLERANCE
    for a, b in ((0, 1), (0, 255)):
        if lo >= a - tol * (b - a) / 2 and hi <= b + tol * (b - a) / 2:
            return f"give {flag.format(f'{a},{b}')} to convert them to [-1, 1]"
    if lo >= -1.5 and hi <= 1.5:
        return "clip them to [-1, 1] (unclipped samples?)"
    return f"rescale them to [-1, 1] (or give {flag.format('LO,HI')}, their range)"


def _convert(array: np.ndarray, name: str, input_range: tuple[float, float]) -> np.ndarray:
    """2 (x − LO) / (HI − LO) − 1 of values that lie in [LO, HI], as float32 in [-1, 1]."""
    lo, hi = (float(v) for v in input_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise UserError(f"input range {lo:g},{hi:g}: give LO,HI with LO < HI")
    _check_float32(lo, hi, f"{name}: the input range {lo:g},{hi:g}")
    found_lo, found_hi = _finite_range(array, name)
    values = array.astype(np.float32)
    slack = RANGE_TOLERANCE * (hi - lo) / 2
    if found_lo < lo - slack or found_hi > hi + slack:
        raise UserError(f"{name}: values in [{found_lo:.4g}, {found_hi:.4g}] lie outside "
                        f"the input range {lo:g},{hi:g} given for it")
    if (lo, hi) == IMAGE_RANGE:
        return np.clip(values, -1, 1, out=values)  # taken as it is (its tolerance clipped)
    converted = (values - np.float32(lo)) / np.float32(hi - lo) * np.float32(2) - np.float32(1)
    return np.clip(converted, -1, 1, out=converted)


def row_keys(array: np.ndarray) -> list[bytes]:
    """Each sample's bytes (C order): keys to compare sets exactly, row by row."""
    array = np.ascontiguousarray(array)
    return [row.tobytes() for row in array.reshape(len(array), -1)]


def check_same_shape(**sets: np.ndarray | None) -> None:
    """ValueError naming the two sets whose per-sample shapes differ."""
    named = [(n, a) for n, a in sets.items() if a is not None]
    first_name, first = named[0]
    for other_name, other in named[1:]:
        if other.shape[1:] != first.shape[1:]:
            raise UserError(f"{other_name} samples have shape {other.shape[1:]} but "
                             f"{first_name} samples have shape {first.shape[1:]}")


_STAT_VALUES = 1 << 20  # values a set's range is estimated from (an even stride through it)
SCALE_MISMATCH = 20.0  # one set's typical magnitude this many times another's


def value_range(array: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentiles of a set's values (on at most ``_STAT_VALUES`` of them,
    evenly strided): its range, robust to a few outliers."""
    flat = np.asarray(array).reshape(-1)
    flat = flat[::max(1, flat.size // _STAT_VALUES)]
    lo, hi = np.percentile(flat.astype(np.float64), [1, 99])
    return float(lo), float(hi)


def range_mismatch(a: tuple[float, float], b: tuple[float, float],
                   images: bool = True) -> str | None:
    """Why two sets' ranges (:func:`value_range`) clearly differ, or None. They differ when
    one set's magnitude (largest |percentile|) is ``SCALE_MISMATCH`` times the other's
    ([0, 255] against [-1, 1]), or, for images, when one set is non-negative (1st
    percentile ≥ 0) and the other clearly signed (1st percentile below −¼ of its
    magnitude: [0, 1] against [-1, 1]). Vectors are not held to the sign test: a few
    points of a toy set (K = 2 on the unit circle) may all lie in one quadrant."""
    scale_a, scale_b = max(map(abs, a)), max(map(abs, b))
    for (x, sx), (y, sy) in (((a, scale_a), (b, scale_b)), ((b, scale_b), (a, scale_a))):
        if images and sx > 0 and sy > 0 and x[0] >= 0 and y[0] < -sy / 4:
            return "one is non-negative, the other signed"
        if sy > 0 and sx > SCALE_MISMATCH * sy:
            return f"one is over {SCALE_MISMATCH:g} times the magnitude of the other"
    return None


def check_ranges(allow: bool = False, flag: str = "--allow-range-mismatch",
                 **sets: np.ndarray | tuple[float, float] | None) -> None:
    """UserError when two of the sets (arrays as converted, or their :func:`value_range`)
    have clearly different ranges (:func:`range_mismatch`), unless ``allow``: a training
    set in [0, 1] against samples in [-1, 1] makes every distance meaningless."""
    if allow:
        return
    named = [(n, a if isinstance(a, tuple) else value_range(a))
             for n, a in sets.items() if a is not None]
    images = any(np.ndim(a) == 4 for a in sets.values() if not isinstance(a, tuple))
    for i, (name_a, range_a) in enumerate(named):
        for name_b, range_b in named[i + 1:]:
            why = range_mismatch(range_a, range_b, images)
            if why:
                raise UserError(f"{name_a} values lie in about [{range_a[0]:.3g}, "
                                f"{range_a[1]:.3g}] but {name_b} values in about "
                                f"[{range_b[0]:.3g}, {range_b[1]:.3g}] ({why}): convert "
                                f"them to one range, or pass {flag}")


MARKER = ".memgen"  # in every output folder: {"command": ..., "version": ...}


def written_by(folder: str | Path) -> str | None:
    """The memgen command that wrote ``folder`` (from its marker), "" for a marker of an
    earlier version that did not record it, None for a folder memgen did not write."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    try:
        return str(json.loads(marker.read_text() or "{}").get("command", ""))
    except (ValueError, AttributeError, OSError):
        return ""


def write_marker(folder: str | Path, command: str) -> None:
    (Path(folder) / MARKER).write_text(json.dumps({"command": command,
                                                   "version": __version__}) + "\n")


def check_output_dir(out: str | Path, command: str, overwrite: bool = False,
                     replaced: bool = True) -> None:
    """UserError unless ``out`` may receive ``command``'s results: absent, empty, or a
    folder that the same command wrote (with ``overwrite``, any folder memgen wrote: its
    marker; never a folder of other files); not in use by another memgen run (its lock,
    :func:`output_lock`); and files can be created where they go (:func:`check_writable`).
    A symlinked ``out`` is checked (and later written) at its target. replaced=False: a
    resumable command that writes inside an existing ``out`` (nothing is renamed into its
    place), which may then be a mount point. Inside :func:`output_locks` (every CLI
    command) the lock is then held until the command ends."""
    shown, out = Path(out), output_target(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{shown} is a file, not a folder; choose another --out")
    if replaced and out.is_dir() and os.path.ismount(out):
        raise UserError(f"{shown} is a mount point; give a folder inside it as --out")
    if out.is_dir() and any(p.name != MARKER for p in out.iterdir()):
        writer = written_by(out)
        if writer is None:
            raise UserError(f"{shown} holds files that memgen did not write; choose another "
                            "--out (--overwrite replaces only folders memgen made, marked "
                            f"by {MARKER})")
        if writer != command and not overwrite:
            owner = f"memgen {writer}" if writer else "an earlier memgen version"
            raise UserError(f"{shown} holds the results of {owner}; choose another --out "
                            "(or pass --overwrite to replace them)")
    check_writable(out, parent=replaced or not out.is_dir())
    output_lock(out, shown).hold()


def output_target(out: str | Path) -> Path:
    """Where ``out`` is written: its target if it is a symlink (written through, never
    replaced by a folder), else ``out`` itself; absolute. UserError for a symlink loop."""
    out = Path(out).absolute()
    if not out.is_symlink():
        return out
    target = Path(os.path.realpath(out))
    if target.is_symlink():
        raise UserError(f"{out} is a symlink that never reaches a folder (a loop)")
    return target


def check_output_file(path: str | Path, overwrite: bool = False) -> None:
    """ValueError unless ``path`` can be written: absent (or a file, with ``overwrite``),
    in a place where files can be created."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; choose another name (or pass --overwrite)")
    check_writable(path)


def check_writable(path: str | Path, parent: bool = True) -> None:
    """ValueError unless files can be created where ``path`` goes: in its nearest existing
    parent folder (where a replacement is made and renamed into place; ``parent``) and, if
    ``path`` is an existing folder, in it (where resumable commands write). Each is tried
    — a temporary file is made and removed —, which catches read-only mounts, /proc and
    permissions alike."""
    path = Path(path).absolute()
    above = path.parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise UserError(f"cannot write {path}: {above} is a file, not a folder")
    for folder in [above] * parent + [path] * path.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".memgen-probe.", dir=folder)
        except OSError as err:
            raise UserError(f"cannot write {path}: {folder} is not writable "
                            f"({err.strerror or err})") from None
        os.close(fd)
        os.unlink(probe)


# ------------------------------------------------------------------ locks on output folders

_HELD: dict[Path, "OutputLock"] = {}  # the locks this process holds, by folder
_SCOPES: list[list["OutputLock"]] = []  # the open output_locks() blocks, innermost last


class OutputLock:
    """An exclusive lock on the output folder ``out`` (its target, if a symlink): flock on
    ``.NAME.memgen-lock`` beside it (on ``out`` itself where its parent is read-only). The
    kernel releases it when the process dies, however it dies; :meth:`release` removes the
    file, and the empty folders made for it or for a claimed ``out`` (nothing half-made is
    left). One per folder and process: taking it again in the same process is a no-op."""

    def __init__(self, out: Path, shown: Path | None = None):
        self.out, self.shown = out, shown or out
        self.path = out.with_name(f".{out.name}.memgen-lock")
        self.fd: int | None = None
        self.created: list[Path] = []  # folders made here (innermost first): removed if empty

    def acquire(self) -> "OutputLock":
        """Take the lock (UserError naming the folder if another run holds it)."""
        self.created = [p for p in self.out.parents if not p.exists()]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        while self.fd is None:
            try:
                fd, path = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666), self.path
            except OSError as err:
                read_only = err.errno in (errno.EACCES, errno.EROFS, errno.EPERM)
                if not read_only or not self.out.is_dir():
                    raise
                fd, path = os.open(self.out, os.O_RDONLY), None  # read-only parent: the folder
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                self._remove_created()
                raise UserError(f"{self.shown} is in use by another memgen run{self._pid()}; "
                                "wait for it to end, or choose another --out") from None
            if path is not None and not _same_file(fd, path):
                os.close(fd)  # its holder removed the file as we opened it: take a new one
                continue
            self.fd, self.path = fd, path
            _HELD[self.out] = self
            if path is not None:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        return self

    def hold(self) -> None:
        """Take the lock, kept by the innermost :func:`output_locks` block; outside one,
        only check that no other run holds it. Under torchrun only rank 0 locks."""
        if self.fd is not None or os.environ.get("RANK", "0") != "0":
            return  # held; or under torchrun, where rank 0 alone writes (memgen train)
        self.acquire()
        if _SCOPES:
            _SCOPES[-1].append(self)
        else:
            self.release()

    def claimed(self, made: list[Path]) -> None:
        """Folders that :func:`claim_output_dir` made: removed on release while they hold
        nothing but memgen's marker (a command that failed before writing anything)."""
        self.created = [p for p in made if p not in self.created] + self.created

    def release(self) -> None:
        if self.fd is None:
            return
        if self.path is not None:
            try:
                self.path.unlink()  # while still locked: a waiting opener sees another file
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = None
        _HELD.pop(self.out, None)
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created:
            try:
                if folder == self.out and folder.is_dir() and [
                        p.name for p in folder.iterdir()] == [MARKER]:
                    (folder / MARKER).unlink()
                folder.rmdir()
            except OSError:
                break
        self.created = []

    def _pid(self) -> str:
        try:
            pid = self.path.read_text().strip() if self.path else ""
        except OSError:
            pid = ""
        return f" (pid {pid})" if pid.isdigit() else ""


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def output_lock(out: str | Path, shown: str | Path | None = None) -> OutputLock:
    """The lock of output folder ``out`` (this process's, if it holds it already)."""
    target = output_target(out)
    if target in _HELD:
        return _HELD[target]
    return OutputLock(target, Path(shown) if shown is not None else None)


@contextmanager
def output_locks():
    """Hold the output locks taken inside the block (:func:`check_output_dir`,
    :func:`claim_output_dir`) until it ends: the CLI runs every command in one, so a second
    run into a folder in use is refused from its first check to the first run's end."""
    held: list[OutputLock] = []
    _SCOPES.append(held)
    try:
        yield
    finally:
        _SCOPES.remove(held)
        for lock in reversed(held):
            lock.release()


@contextmanager
def atomic_output_dir(out: str | Path, command: str, overwrite: bool = False):
    """Yield a temporary folder that replaces ``out`` only if the block succeeds.

    ``out`` must pass :func:`check_output_dir`; the folder is marked as ``command``'s, and
    locked for the block (:class:`OutputLock`). A symlinked ``out`` is written through to
    its target. On failure or interruption nothing is left behind.
    """
    shown, out = Path(out), output_target(out)
    check_output_dir(out, command, overwrite)
    lock = output_lock(out, shown)
    mine = lock.fd is None
    if mine:
        lock.acquire()
    try:
        check_output_dir(out, command, overwrite)  # again, now that no one else writes it
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            tmp.chmod(0o777 & ~_umask())
            write_marker(tmp, command)
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        lock.created = []  # they hold the results now
    finally:
        if mine:
            lock.release()


def claim_output_dir(out: str | Path, command: str, overwrite: bool = False) -> Path:
    """Create (or reuse) a resumable output folder such as a sweep's or a training run's:
    checked by :func:`check_output_dir` (which locks it for the command), then marked as
    ``command``'s. With ``overwrite``, another command's folder is emptied first. Returns
    the folder written (a symlink's target). If the command then fails before writing
    anything, the folder it made is removed when the lock is released."""
    shown, out = Path(out), output_target(out)
    check_output_dir(out, command, overwrite, replaced=overwrite)
    writer = written_by(out)
    if overwrite and out.is_dir() and writer is not None and writer != command:
        shutil.rmtree(out)
    made = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    if written_by(out) != command:
        write_marker(out, command)
    if out in _HELD:
        _HELD[out].claimed(made)
    return shown


@contextmanager
def atomic_file(path: str | Path):
    """Yield a temporary path (same suffix) that becomes ``path`` if the block succeeds.

    Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def read_csv_rows(path: str | Path) -> list[dict]:
    """The rows of a CSV file with a header line, as ``csv.DictReader`` gives them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        kind = "binary, not text" if isinstance(err, UnicodeDecodeError) else str(err)
        raise UserError(f"{path}: not a CSV table ({kind})") from None


CSV_DIGITS = 6


def csv_number(value):
    """A CSV cell: "" for None, a real number with CSV_DIGITS significant digits, anything
    else (K, counts) as it is. Six digits keep a fraction c/n exact for n ≤ 10^6
    (round(value · n) = c), and rounding is monotone, so lo ≤ p ≤ hi still holds."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{CSV_DIGITS}g}"
    return value
