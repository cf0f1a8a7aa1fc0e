"""Commands that measure sets of samples: classify, capacities and the plots of their results.

Registered on the ``memgen`` group by :mod:`memgen.cli.main` (same error handling).
"""

from __future__ import annotations

import time
import typing
from dataclasses import fields
from pathlib import Path

import click
import numpy as np

from memgen.cli.options import (SEED, RegistryChoice, command_argv, echo_verbose,
                                input_range_option, input_ranges, overwrite_option,
                                show_progress)
from memgen.errors import UserError
from memgen.experiments.phase import read_phase
from memgen.io import (atomic_file, atomic_output_dir, check_output_dir, check_output_file,
                       check_ranges, load_samples, write_json)
from memgen.metrics.capacity import capacities as compute, describe, read_fraction_table
from memgen.metrics.classify import (ClassifyConfig, classify_sets, streamed_sample, summary,
                                     write_classification)
from memgen.metrics.rules import LABEL_NAMES
from memgen.neighbours import ShardSet, open_shards
from memgen.provenance import file_record, gather, shards_record
from memgen.report.figures import plot_fractions, plot_neighbours, plot_phase, save_figure

SETS = ("train", "eval", "synth", "heldout")  # the sets --input-range SET=LO,HI names


def classify_options(command):
    """One option per ClassifyConfig field, in its order: ``--delta-m`` for delta_m, the type
    from the annotation (a bool: a flag), the help, choices and default from the field's
    metadata (memgen.metrics.classify.option). A new field is a new option, nothing else."""
    hints = typing.get_type_hints(ClassifyConfig)
    for f in reversed(fields(ClassifyConfig)):
        command = click.option(f"--{f.name.replace('_', '-')}",
                               **_click_settings(f, hints[f.name]))(command)
    return command


def _click_settings(f, hint) -> dict:
    """click.option's keywords for one ClassifyConfig field."""
    meta = f.metadata
    kind = next(o for o in typing.get_args(hint) or (hint,) if o is not type(None))
    if kind is bool:
        return {"is_flag": True, "help": meta["help"]}
    kind = (RegistryChoice(meta["registry"]) if "registry" in meta
            else click.Choice(meta["choices"]) if "choices" in meta
            else SEED if meta.get("seed") else float if meta.get("unit") == "MiB" else kind)
    default = meta.get("default", f.default)
    shown = {} if default is None else {"default": default, "show_default": True}
    return {"type": kind, **shown, "help": meta["help"]}


# the options given in MiB, stored in bytes (--memory-budget)
MIB_OPTIONS = tuple(f.name for f in fields(ClassifyConfig) if f.metadata.get("unit") == "MiB")


@click.command()
@click.option("--train", "train_path", required=True, type=click.Path(dir_okay=False),
              help="Training set S (.npz with key 'samples', or .npy).")
@click.option("--eval", "eval_path", required=True, type=click.Path(dir_okay=False),
              help="Evaluated samples S_eval, generated independently of S'.")
@click.option("--synth", "synth_path",
              help="Synthetic set S' (|S'| >> |S|): a file, or a folder of npz/npy shards or "
                   "a quoted glob, streamed from disk. Omitted: S_eval is its own synthetic "
                   "set, self-matches excluded.")
@click.option("--heldout", "heldout_path", type=click.Path(dir_okay=False),
              help="Held-out real data (not in S): null rates and calibrated thresholds.")
@classify_options
@click.option("--state", "state_path", type=click.Path(dir_okay=False),
              help="Restart file for a streamed --synth: an interrupted search resumes.")
@input_range_option(SETS)
@click.option("--allow-range-mismatch", is_flag=True,
              help="Classify sets whose value ranges clearly differ (one non-negative, "
                   "another signed; or one 20 times the magnitude of another).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: summary.json, labels.npz.")
@overwrite_option
def classify(train_path, eval_path, synth_path, heldout_path, state_path, input_range,
             allow_range_mismatch, out, overwrite, **options):
    """Label every evaluated sample memorized, spurious or generalized (eqs. 4-6)."""
    config = ClassifyConfig(**{name: _mib(value) if name in MIB_OPTIONS else value
                               for name, value in options.items()})
    config.make_rule()  # reject bad thresholds and --out before reading any data
    if not 0 <= config.alpha < 1:
        raise UserError(f"--alpha {config.alpha}: a null detection rate lies in [0, 1)")
    if config.calibrate and not heldout_path:
        raise UserError("--calibrate needs held-out real data (--heldout)")
    if state_path and (not synth_path or Path(synth_path).is_file()):
        raise UserError("--state resumes a streamed --synth (a folder or glob of shards); "
                        "one file or none is read whole: drop --state")
    check_output_dir(out, "classify", overwrite)
    ranges = input_ranges(input_range, tuple(
        which for which, path in zip(SETS, (train_path, eval_path, synth_path, heldout_path))
        if path))
    train, eval_set, heldout = (
        _read(path, which, ranges) if path else None
        for path, which in ((train_path, "train"), (eval_path, "eval"), (heldout_path, "heldout")))
    synth = _synth_set(synth_path, ranges.get("synth"))
    check_ranges(allow_range_mismatch, **{
        "--train": train, "--eval": eval_set, "--heldout": heldout,
        "--synth": streamed_sample(synth, "--synth") if isinstance(synth, ShardSet) else synth})
    provenance = gather(_input_records(train=(train_path, train), eval=(eval_path, eval_set),
                                       synth=(synth_path, synth),
                                       heldout=(heldout_path, heldout)), command_argv())
    t0 = time.perf_counter()
    result = classify_sets(eval_set, train, synth, heldout, config, progress=show_progress(),
                          state=state_path)
    echo_verbose(f"classified in {time.perf_counter() - t0:.2f} s (neighbours, rule"
                 f"{', null rates, quality' if heldout is not None else ''})")
    with atomic_output_dir(out, "classify", overwrite) as tmp:
        write_classification(tmp, result, provenance)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    print_summary(summary(result))
    click.echo(f"wrote {Path(out) / 'summary.json'} and {Path(out) / 'labels.npz'}")


def _input_records(**sets) -> dict:
    """name → (path, array or ShardSet or None): the provenance record of each given set
    (content hash and shape; each shard of a streamed set), echoed with --verbose."""
    records = {}
    for name, (path, data) in sets.items():
        if data is None:
            continue
        records[name] = (shards_record(path, [(s.path, (s.rows, *s.sample_shape))
                                              for s in data.shards])
                         if isinstance(data, ShardSet) else file_record(path, data.shape))
        shape = " × ".join(map(str, records[name]["shape"]))
        files = records[name].get("files")
        echo_verbose(f"--{name} {path}: {shape}, " + (f"{len(files)} shards" if files else
                                                       f"sha256 {records[name]['sha256']}"))
    return records


def _read(path, which: str, ranges: dict) -> np.ndarray:
    """--train, --eval or --heldout under the input contract (``memgen.io``)."""
    return load_samples(path, f"--{which}", ranges.get(which),
                        flag=f"--input-range {which}={{}}")


def _synth_set(path, input_range=None):
    """None, an in-memory array (one file), or a ShardSet (a folder or glob: streamed)."""
    if not path:
        return None
    if Path(path).is_file():
        return _read(path, "synth", {"synth": input_range})
    if input_range is not None:
        raise UserError("--input-range synth=: a streamed --synth is read as it is; convert "
                        "its shards to [-1, 1] (or give one file)")
    try:
        return open_shards(path)
    except ValueError as err:
        raise UserError(f"--synth: {err}") from None


@click.command()
@click.argument("fractions_csv", type=click.Path(dir_okay=False))
@click.option("--epsilon", type=float, default=0.1, show_default=True,
              help="Error margin of eqs. 1 and 3.")
@click.option("--bootstrap", "n_resamples", type=int, default=1000, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the JSON here.")
@overwrite_option
def capacities(fractions_csv, epsilon, n_resamples, seed, out, overwrite):
    """Memorization, spurious and generalization capacities (eqs. 1-3) of a fractions.csv."""
    _check_epsilon(epsilon)
    if n_resamples < 1:
        raise UserError(f"--bootstrap {n_resamples}: give at least 1 resample")
    if out:
        check_output_file(out, overwrite)
    result = compute(read_fraction_table(fractions_csv), epsilon, n_resamples, seed)
    payload = result.as_dict()
    for c in result.values():
        click.echo(describe(c))
    if out:
        with atomic_file(out) as tmp:
            write_json(tmp, payload)


@click.group()
def plot():
    """Figures: fraction curves (paper Fig. 2) and neighbour grids (paper Fig. 1)."""


@plot.command("fractions")
@click.argument("fractions_csv", type=click.Path(dir_okay=False))
@click.option("--epsilon", type=float, default=0.1, show_default=True)
@click.option("--title", default="", help="Figure title.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file.")
@overwrite_option
def plot_fractions_cmd(fractions_csv, epsilon, title, out, overwrite):
    """Fractions of the three labels against K, with intervals and MC/SC/GC marked; the
    null rates (null_<label> columns, when every row has them) dashed."""
    _check_epsilon(epsilon)
    _check_image_file(out, overwrite)
    table = read_fraction_table(fractions_csv)
    caps = compute(table, epsilon, n_resamples=1)
    fig = plot_fractions(table.K, table.fractions, table.lo, table.hi,
                         capacities={n: c.value for n, c in caps.items()}, null=table.null,
                         title=title)
    _save(fig, out, dpi=150)


@plot.command("phase")
@click.argument("phase_csv", type=click.Path(dir_okay=False))
@click.option("--title", default="", help="Figure title.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file.")
@overwrite_option
def plot_phase_cmd(phase_csv, title, out, overwrite):
    """Curves (one σ) or (K × β) heat maps (several σ) of a phase.csv."""
    _check_image_file(out, overwrite)
    _save(plot_phase(read_phase(phase_csv), title=title), out, dpi=150)


@plot.command("neighbours")
@click.option("--train", "train_path", required=True, type=click.Path(dir_okay=False))
@click.option("--eval", "eval_path", required=True, type=click.Path(dir_okay=False))
@click.option("--synth", "synth_path", type=click.Path(dir_okay=False))
@click.option("--labels", "labels_path", required=True, type=click.Path(dir_okay=False),
              help="labels.npz written by memgen classify.")
@click.option("--per-label", type=int, default=2, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@input_range_option(SETS[:3])
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file.")
@overwrite_option
def plot_neighbours_cmd(train_path, eval_path, synth_path, labels_path, per_label, seed,
                        input_range, out, overwrite):
    """A few samples per label with their top-k training and synthetic neighbours."""
    if per_label < 1:
        raise UserError(f"--per-label {per_label}: show at least 1 sample per label")
    _check_image_file(out, overwrite)
    ranges = input_ranges(input_range, SETS[:2] + (("synth",) if synth_path else ()))
    train, eval_set = _read(train_path, "train", ranges), _read(eval_path, "eval", ranges)
    synth = _read(synth_path, "synth", ranges) if synth_path else eval_set
    found = _load_labels(labels_path, len(eval_set), len(train), len(synth))
    fig = plot_neighbours(eval_set, train, synth, found["train_idx"], found["synth_idx"],
                          found["labels"], _choose(found["labels"], per_label, seed),
                          found["train_dist"], found["synth_dist"])
    _save(fig, out, dpi=120)


def _save(fig, out: str, dpi: int) -> None:
    save_figure(fig, out, dpi)
    click.echo(f"wrote {out}")


def _mib(value: float) -> int:
    """MiB in bytes: at least one byte (1e-30 MiB would round to none)."""
    if not value > 0 or value == float("inf"):
        raise UserError("--memory-budget must be a positive number of MiB")
    return max(1, int(value * 2**20))


def _check_epsilon(epsilon: float) -> None:
    if not 0 < epsilon < 1:
        raise UserError(f"--epsilon {epsilon}: the capacities' error margin lies in (0, 1)")


IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _check_image_file(out: str, overwrite: bool) -> None:
    if Path(out).suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"--out {out}: give an image file name ending in "
                        f"{', '.join(IMAGE_SUFFIXES)}")
    check_output_file(out, overwrite)


def print_summary(payload: dict) -> None:
    null = payload.get("null") or {}
    click.echo(f"{payload['n_eval']} evaluated samples, rule {payload['rule']} "
               f"(δ_m = {payload['delta_m']:.4g}, δ_s = {payload['delta_s']:.4g}"
               f"{', calibrated' if payload.get('calibrated') else ''}), "
               f"metric {payload['metric']}")
    header = f"{'label':<12}{'fraction':>10}{'95% CI':>20}"
    click.echo(header + (f"{'null rate':>12}" if null else ""))
    for name, value in payload["fractions"].items():
        lo, hi = payload["ci95"][name]
        line = f"{name:<12}{value:>10.4f}{f'[{lo:.4f}, {hi:.4f}]':>20}"
        click.echo(line + (f"{null['fractions'][name]:>12.4f}" if null else ""))
    if null:
        click.echo(null_note(null, payload["n_eval"], payload["n_synth"]))
    if payload.get("quality"):
        _print_quality(payload["quality"])


def null_note(null: dict, n_eval: int, n_synth: int) -> str:
    """Which thresholds the null rates are at, and whether held-out data ran short."""
    given = null.get("given_thresholds")
    text = ("null rates at the calibrated thresholds, on the held-out rows that chose them "
            "(≤ α by construction, not an independent estimate; at the given thresholds: "
            + "/".join(f"{v:.4f}" for v in given["fractions"].values()) + ")"
            if given else "null rates: held-out real data labelled by the same rule")
    if null["n_eval"] < n_eval or null["n_synth"] < n_synth:
        text += (f"; held-out data too small for the null run: {null['n_eval']} evaluated / "
                 f"{null['n_synth']} synthetic held-out samples against {n_eval} / "
                 f"{n_synth} (a smaller S′ gives a lower spurious null rate)")
    return text


def _print_quality(quality: dict) -> None:
    """The quality line (prdc vs held-out data, the held-out baseline in parentheses)."""
    base = quality.get("baseline") or {}
    cells = "  ".join(f"{name} {quality[name]:.3f}"
                      + (f" (held-out {base[name]:.3f})" if name in base else "")
                      for name in ("precision", "recall", "density", "coverage"))
    click.echo(f"quality vs held-out (k = {quality['k']}, {quality['n_real']} reference "
               f"samples): {cells}")
    by_label = "  ".join(f"{name} {'-' if value is None else f'{value:.3f}'}"
                         for name, value in quality["precision_by_label"].items())
    click.echo(f"precision by label: {by_label}")


def _load_labels(path: str, n_eval: int, n_train: int, n_synth: int) -> dict:
    """labels.npz of memgen classify, checked against the sets it is drawn with."""
    keys = ("labels", "train_dist", "train_idx", "synth_dist", "synth_idx")
    if not Path(path).is_file():
        raise UserError(f"--labels: no such file {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise UserError(f"--labels: {path} lacks {', '.join(missing)} (not a "
                                "labels.npz written by memgen classify)")
            found = {key: archive[key] for key in keys}
    except (OSError, ValueError, EOFError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"--labels: cannot read {path} ({err})") from None
    labels = found["labels"]
    if len(labels) != n_eval:
        raise UserError(f"--labels holds {len(labels)} labels but --eval has {n_eval} samples")
    if not np.issubdtype(labels.dtype, np.integer) or ((labels < 0) | (labels > 2)).any():
        raise UserError("--labels: labels must be 0 (memorized), 1 (spurious) or 2 "
                        "(generalized)")
    for name, n in (("train", n_train), ("synth", n_synth)):
        idx = found[f"{name}_idx"]
        if idx.ndim != 2 or len(idx) != n_eval or found[f"{name}_dist"].shape != idx.shape:
            raise UserError(f"--labels: {name}_idx and {name}_dist must be ({n_eval}, k)")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise UserError(f"--labels: {name}_idx points past the {n} samples of "
                            f"--{name} (were the labels made with other sets?)")
    return found


def _choose(labels: np.ndarray, per_label: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    chosen = {}
    for code, name in enumerate(LABEL_NAMES):
        members = np.flatnonzero(labels == code)
        chosen[name] = sorted(rng.choice(members, min(per_label, len(members)), replace=False))
    return chosen
