"""``memgen rescore``: the authors' released files, labelled by both protocols.

Registered on the ``memgen`` group by :mod:`memgen.cli.main` (same error handling); the
reading and the labels are :mod:`memgen.metrics.released`.
"""

from __future__ import annotations

import csv

import click

from memgen.cli.options import RegistryChoice, overwrite_option
from memgen.errors import UserError
from memgen.io import atomic_file, check_output_file, load_samples
from memgen.metrics.features import FEATURE_MAPS
from memgen.metrics.released import (Rescored, released_files, rescore_distance_file,
                                     rescore_samples)
from memgen.metrics.rules import LABEL_NAMES


@click.command()
@click.option("--dists", "dists_path",
              help="Their distance files (run_distances.py): a K.npz or a folder of them.")
@click.option("--samples", "samples_path",
              help="Their generated sets: a K.npz (key 'samples', N×C×H×W in [-1, 1]) or a "
                   "folder of them; needs --train.")
@click.option("--train", "train_path",
              help="The training split of each K: a K.npz (key 'samples') or a folder of "
                   "them, named as --samples.")
@click.option("--metric", type=RegistryChoice(FEATURE_MAPS), default="l2", show_default=True,
              help="Distance for --samples (their README's cutoffs are for lpips-alex-ref).")
@click.option("--delta-m", type=float,
              help="Memorization cutoff on d1, the files' units [0.03: LPIPS-AlexNet].")
@click.option("--delta-s", type=float,
              help="Spurious cutoff on s1, the files' units [0.02: LPIPS-AlexNet].")
@click.option("--l2-path", is_flag=True,
              help="The distance files came from the public code's pixel-l2 path: refused, "
                   "they hold the 5 FARTHEST samples (1/(|x - y| + 1e-8), smallest first).")
@click.option("--out", type=click.Path(dir_okay=False), help="A CSV, one row per K and source.")
@overwrite_option
def rescore(dists_path, samples_path, train_path, metric, delta_m, delta_s, l2_path, out,
            overwrite):
    """Both protocols' fractions per K from the authors' released files, and the d1/d2
    breakdown of the reference protocol's spurious samples.

    \b
    reference       their code: d1 <= delta_m memorized; s1 <= delta_s and not memorized
                    spurious; s1 within the same set, leave-one-out
    paper_same_set  eqs. 4-6 (1/3, 1/3) on the same neighbours: S' is the set itself,
                    not an independent |S'| >> K set (which their files do not hold)
    near_copy / between / equidistant
                    the spurious samples with d1/d2 <= 1/3, <= 2/3, above
    Not computable from distance files: null rates, calibration, --dedup, quality."""
    if not dists_path and not samples_path:
        raise UserError("give --dists, or --samples with --train")
    if samples_path and not train_path:
        raise UserError("--samples needs the training split of each K (--train)")
    if l2_path:
        raise UserError("the public code's pixel-l2 distance files hold the 5 farthest "
                        "samples, not the nearest: rescore their --samples instead")
    if out:
        check_output_file(out, overwrite)
    rows = [rescore_distance_file(path, delta_m, delta_s)
            for path in released_files(dists_path).values()] if dists_path else []
    if samples_path:
        rows += _rescore_samples(samples_path, train_path, metric, delta_m, delta_s)
    for row in sorted(rows, key=lambda r: (r.K, r.source)):
        click.echo(describe(row))
    if out:
        _write_csv(out, rows)
        click.echo(f"wrote {out} ({len(rows)} rows)")


def _rescore_samples(samples_path, train_path, metric, delta_m, delta_s) -> list[Rescored]:
    samples, trains = released_files(samples_path), released_files(train_path)
    missing = sorted(set(samples) - set(trains))
    if missing and not (len(trains) == 1 and len(samples) == 1):
        raise UserError(f"--train has no training split for K = {', '.join(map(str, missing))}")
    pairs = (zip(samples.items(), trains.values()) if missing
             else ((item, trains[item[0]]) for item in samples.items()))
    return [rescore_samples(K, load_samples(path, f"--samples {path.name}"),
                            load_samples(train, f"--train {train.name}"), metric, delta_m,
                            delta_s) for (K, path), train in pairs]


def describe(row: Rescored) -> str:
    """One line per K: both protocols' fractions and the spurious breakdown."""
    def fractions(counts):
        return " ".join(f"{name[0]} {counts[name] / row.n:.3f}" for name in LABEL_NAMES)
    split = row.breakdown["counts"]
    return (f"K = {row.K:<6} {row.source:<9} n = {row.n:<6} reference [{fractions(row.reference)}]"
            f"  paper_same_set [{fractions(row.paper)}]  spurious by d1/d2: "
            + ", ".join(f"{name} {count}" for name, count in split.items()))


def _write_csv(out, rows: list[Rescored]) -> None:
    table = [row.row() for row in sorted(rows, key=lambda r: (r.K, r.source))]
    with atomic_file(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
