"""``memgen aggregate``: several ``memgen classify`` folders as one fractions.csv.

A thin wrapper of :func:`memgen.experiments.aggregate.aggregate_folders`; registered on the
``memgen`` group by :mod:`memgen.cli.main` (same error handling).
"""

from __future__ import annotations

import click

from memgen.cli.options import overwrite_option
from memgen.experiments.aggregate import aggregate_folders


@click.command()
@click.argument("folders", nargs=-1, required=True)
@click.option("--K", "Ks", type=int, multiple=True,
              help="The K of each folder, in the folders' order (--K 2 9 or --K 2 --K 9); "
                   "not combined with DIR:K.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The table to write (fractions.csv).")
@overwrite_option
def aggregate(folders, Ks, out, overwrite):
    """Collect memgen classify folders (summary.json, labels.npz), one per training-set
    size K, into the fractions.csv that memgen capacities and memgen plot fractions read:
    a sweep of your own models.

    Each folder's K is DIR:K, else the matching --K, else its summary.json's n_train.
    Refused, with nothing written: a folder without summary.json or labels.npz, two
    folders with the same K, a folder given twice, a --K count that is not the folder
    count, --K together with DIR:K.

    \b
    Columns (one row per folder, sorted by K; empty where not measured):
      K                               training-set size
      memorized, spurious, generalized
                                      fractions of the evaluated samples
      <label>_lo, <label>_hi          95% Clopper-Pearson bounds
      n_eval, n_synth                 evaluated and synthetic set sizes
      null_<label>                    null rates: held-out real data, same rule
      null_n_eval, null_n_synth       the null run's set sizes
      precision, recall, density, coverage
                                      sample quality vs held-out data
      precision_<label>               precision of each label's samples
      baseline_precision, baseline_recall
                                      held-out data's own precision and recall
    """
    collected = aggregate_folders(folders, out, Ks, overwrite)
    for warning in collected.warnings:
        click.echo(f"warning: {warning}", err=True)
    for row in collected.rows:
        click.echo(f"K = {row.K:<8} {row.folder}")
    click.echo(f"wrote {out} ({len(collected.rows)} rows)")
