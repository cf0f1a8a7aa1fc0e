"""Bring-your-own sweeps: ``memgen classify`` folders, each tagged with its K, as the
fractions.csv of a sweep (``memgen aggregate``).

The table is written by the sweep's own :func:`memgen.experiments.sweep.write_fractions`
(the same columns, one row per folder, sorted by K), so ``memgen capacities`` and
``memgen plot fractions`` read it unchanged. Each folder's K comes from exactly one place:

* ``DIR:K`` — the text after the last colon, when it is a whole number and ``DIR:K`` is not
  itself a folder (refused as ambiguous when both ``DIR:K`` and ``DIR`` are folders);
* ``Ks`` (``--K``) — one per folder, in the folders' order; not combined with ``DIR:K``;
* otherwise summary.json's ``n_train``, the size of the training set it was classified
  against.

Refused (``UserError``, nothing written): a folder without summary.json or labels.npz, a
summary.json that ``memgen classify`` did not write, labels.npz counts that disagree with
it, a folder given twice, two folders with the same K, and a number of Ks that is not the
number of folders. Orchestration only: the fractions are those of each summary.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from memgen.errors import UserError
from memgen.experiments.sweep import write_fractions
from memgen.io import atomic_file, check_output_file
from memgen.metrics.rules import LABEL_NAMES

SUMMARY_KEYS = ("n_eval", "counts", "fractions", "ci95")


@dataclass(frozen=True)
class Source:
    """A classify folder and its K as given (None: read summary.json's n_train)."""

    folder: Path
    K: int | None = None


@dataclass(frozen=True)
class Measured:
    """One folder's classification tagged with its K: a row of fractions.csv (what
    ``write_fractions`` reads: K, summary, steps)."""

    K: int
    summary: dict
    folder: Path
    steps: int | None = None


@dataclass(frozen=True)
class Collected:
    """The rows, sorted by K, and what the caller should be told about them."""

    rows: tuple[Measured, ...]
    warnings: tuple[str, ...] = ()


def parse_sources(args: Sequence[str | Path], Ks: Sequence[int] = ()) -> list[Source]:
    """Folders as given on the command line (``DIR`` or ``DIR:K``) with ``--K``'s values."""
    if not args:
        raise UserError("give at least one folder written by memgen classify")
    sources = [_split(str(arg)) for arg in args]
    if Ks:
        tagged = [str(s.folder) for s in sources if s.K is not None]
        if tagged:
            raise UserError(f"{tagged[0]} is tagged DIR:K and --K is given too: tag the "
                             "folders one way only")
        if len(Ks) != len(sources):
            raise UserError(f"{len(Ks)} --K value(s) for {len(sources)} folder(s): give one K "
                             "per folder, in the folders' order")
        sources = [Source(s.folder, int(K)) for s, K in zip(sources, Ks)]
    bad = [s for s in sources if s.K is not None and s.K < 1]
    if bad:
        raise UserError(f"{bad[0].folder}: K = {bad[0].K}, but a training-set size is at "
                         "least 1")
    return sources


def _split(arg: str) -> Source:
    """``DIR:K`` → (DIR, K) unless ``DIR:K`` is itself a folder; ``DIR`` → (DIR, None)."""
    head, colon, tail = arg.rpartition(":")
    if not colon or not head or not re.fullmatch(r"[0-9]+", tail):  # not isdigit: "²"
        return Source(Path(arg))
    if Path(arg).is_dir():
        if Path(head).is_dir():
            raise UserError(f"{arg} is ambiguous: both {arg} and {head} are folders (rename "
                             "one, or tag with --K)")
        return Source(Path(arg))
    return Source(Path(head), int(tail))


def collect(sources: Sequence[Source]) -> Collected:
    """Each folder's summary.json with its K, checked; rows sorted by K."""
    seen: dict[Path, Path] = {}
    for s in sources:
        key = s.folder.resolve()
        if key in seen:
            raise UserError(f"{s.folder} is given twice (as {seen[key]} and {s.folder})")
        seen[key] = s.folder
    rows, warnings = [], []
    by_K: dict[int, Path] = {}
    for s in sources:
        summary = read_classification(s.folder)
        n_train = summary.get("n_train")
        K = s.K if s.K is not None else n_train
        if K is None:
            raise UserError(f"{s.folder}/summary.json records no n_train (an earlier memgen "
                             f"version): give its K as {s.folder}:K or with --K")
        K = int(K)
        if K in by_K:
            raise UserError(f"K = {K} for both {by_K[K]} and {s.folder}: each K may appear "
                             "once (tag the folders with DIR:K or --K)")
        by_K[K] = s.folder
        if n_train is not None and int(n_train) != K:
            warnings.append(f"{s.folder}: tagged K = {K}, but it was classified against "
                            f"{n_train} training samples")
        rows.append(Measured(K, summary, s.folder))
    rows.sort(key=lambda r: r.K)
    return Collected(tuple(rows), tuple(warnings + _mixed(rows)))


def read_classification(folder: Path) -> dict:
    """summary.json of a ``memgen classify`` folder, checked against its labels.npz."""
    if not folder.is_dir():
        raise UserError(f"no such folder: {folder}")
    path = folder / "summary.json"
    if not path.is_file():
        raise UserError(f"{folder} holds no summary.json (not a folder written by memgen "
                         "classify)")
    try:
        summary = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    problem = _summary_problem(summary)
    if problem:
        raise UserError(f"{path}: {problem} (not written by memgen classify)")
    counts = [int(summary["counts"][name]) for name in LABEL_NAMES]
    found = _label_counts(folder / "labels.npz")
    if found != counts:
        raise UserError(f"{folder}: labels.npz counts {found} but summary.json {counts} "
                         "(memorized, spurious, generalized): files of two runs?")
    return summary


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _summary_problem(summary) -> str | None:
    """What is wrong with a summary.json's content, or None: SUMMARY_KEYS present; counts,
    fractions and ci95 dicts over every label (counts integers, fractions numbers, ci95
    pairs of numbers); n_train, when recorded, an integer >= 1."""
    if not isinstance(summary, dict):
        return f"expected an object, got {type(summary).__name__}"
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        return f"lacks {', '.join(missing)}"
    checks = {"counts": _is_int, "fractions": _is_number,
              "ci95": lambda v: (isinstance(v, list) and len(v) == 2
                                 and all(map(_is_number, v)))}
    for key, valid in checks.items():
        value = summary[key]
        if not isinstance(value, dict):
            return f"{key} is {type(value).__name__}, not a dict over {', '.join(LABEL_NAMES)}"
        lacking = [name for name in LABEL_NAMES if name not in value]
        if lacking:
            return f"{key} lacks {', '.join(lacking)}"
        wrong = [name for name in LABEL_NAMES if not valid(value[name])]
        if wrong:
            return f"{key}[{wrong[0]!r}] is {value[wrong[0]]!r}"
    n_train = summary.get("n_train")
    if n_train is not None and not (_is_int(n_train) and n_train >= 1):
        return f"n_train is {n_train!r}, not an integer >= 1"
    return None


def _label_counts(path: Path) -> list[int]:
    if not path.is_file():
        raise UserError(f"{path.parent} holds no labels.npz (not a folder written by memgen "
                         "classify)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            labels = archive["labels"].astype(np.int64).ravel()
        return np.bincount(labels, minlength=3).tolist()  # ValueError for negative labels
    except (OSError, ValueError, KeyError, EOFError, TypeError) as err:
        raise UserError(f"cannot read the labels of {path} ({err})") from None


def _mixed(rows: Sequence[Measured]) -> list[str]:
    """Warnings for rows that are not comparable: several rules or metrics, null rates
    (``--heldout``) at some K only."""
    out = []
    for key in ("rule", "metric"):
        values = sorted({str(r.summary.get(key)) for r in rows})
        if len(values) > 1:
            out.append(f"the folders were classified with different {key}s ({', '.join(values)})")
    with_null = [r.K for r in rows if r.summary.get("null")]
    if with_null and len(with_null) < len(rows):
        out.append(f"null rates only at K = {', '.join(map(str, with_null))}: the null "
                   "columns are incomplete, and capacities and plots ignore them")
    return out


def aggregate_folders(args: Sequence[str | Path], out: str | Path, Ks: Sequence[int] = (),
                      overwrite: bool = False) -> Collected:
    """``memgen aggregate``: check ``out``, read and tag every folder, write the table."""
    check_output_file(out, overwrite)
    collected = collect(parse_sources(args, Ks))
    with atomic_file(out) as tmp:
        write_fractions(tmp, list(collected.rows))
    return collected
