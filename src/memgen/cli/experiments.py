"""Commands that run experiments: sweep, phase, landscape and the planted-copies demo.

Registered on the ``memgen`` group by :mod:`memgen.cli.main` (same error handling).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from memgen.cli.measure import print_summary
from memgen.cli.options import (SEED, RegistryChoice, command_argv, echo_verbose, overwrite_option,
                                show_progress, verbose_enabled)
from memgen.errors import UserError
from memgen.experiments.config import check_device, load_config
from memgen.experiments.demo import DemoConfig, run_demo
from memgen.experiments.executors import EXECUTORS
from memgen.experiments.landscape import (LandscapeConfig, checkpoint_rows, run_landscape,
                                          write_landscape, write_learned)
from memgen.experiments.phase import PHASE_DATA, PhaseConfig, run_phase, write_phase
from memgen.experiments.census_stage import peak_line
from memgen.experiments.sweep import SweepResult, check_sweep_dir, plan, run_sweep
from memgen.io import atomic_output_dir, check_output_dir
from memgen.metrics.capacity import describe
from memgen.metrics.features import registry_help
from memgen.metrics.rules import LABEL_NAMES


@click.command()
@click.option("--data-root", type=click.Path(file_okay=False),
              help="Folder with the Fashion-MNIST IDX files [MEMGEN_DATA or the Debian path].")
@click.option("--K", "K", type=int, default=1000, show_default=True, help="Training-set size.")
@click.option("--n-eval", type=int, default=1000, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@overwrite_option
def demo(data_root, K, n_eval, seed, out, overwrite):
    """Classify planted copies, blends and novel images built from real Fashion-MNIST,
    and compare the detected labels with the planted truth."""
    check_output_dir(out, "demo", overwrite)
    result = run_demo(DemoConfig(K=K, n_eval=n_eval, seed=seed), data_root, out,
                      progress=show_progress(), overwrite=overwrite)
    print_summary(result.summary)
    click.echo(result.confusion_text)
    click.echo(f"wrote {out}/: summary.json, labels.npz, demo.json, fractions.png, "
               "neighbours.png")


@click.command()
@click.option("--data", type=click.Choice(PHASE_DATA), default="circle",
              show_default=True, help="Stored patterns: the unit-circle pool or Fashion-MNIST.")
@click.option("--sigma", "sigmas", type=float, multiple=True, required=True,
              help="VE noise level(s) σ, e.g. --sigma 0.1 0.2 (β = 1/(2σ²)); several give a "
                   "(K × β) heat map.")
@click.option("--K", "Ks", type=int, multiple=True, required=True,
              help="Numbers of stored patterns (nested subsets), e.g. --K 2 4 9 16.")
@click.option("--n-starts", type=int, default=1024, show_default=True)
@click.option("--starts", type=click.Choice(["noisy", "box", "annealed"]), default="noisy",
              show_default=True, help="Retrieval starts: samples of p_σ, uniform in the data's "
                                      "box, or reverse diffusion stopped at σ.")
@click.option("--method", type=click.Choice(["fixed_point", "gradient"]), default="fixed_point",
              show_default=True)
@click.option("--max-iter", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--tol", type=click.FloatRange(min=0), default=1e-6, show_default=True,
              help="Stop when a step is shorter than tol × the patterns' RMS norm.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default=None,
              help="[float64 for the circle, float32 for images]")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@overwrite_option
def phase(data, sigmas, Ks, n_starts, starts, method, max_iter, tol, dtype, data_root, seed, out,
          overwrite):
    """Attractors of the exact energy −log p_σ against the load K (and σ): phase.csv."""
    if not tol < float("inf"):  # NaN passes click's FloatRange, and stops every descent at once
        raise UserError(f"--tol {tol}: give a finite tolerance (e.g. 1e-6)")
    if data_root and data == "circle":
        raise UserError("--data-root: the circle pool is generated, not read; --data-root "
                        "is for --data fmnist")
    config = PhaseConfig(data=data, sigmas=tuple(sigmas), Ks=tuple(Ks), n_starts=n_starts,
                         starts=starts, method=method, tol=tol, max_iter=max_iter, seed=seed,
                         data_root=data_root,
                         dtype=dtype or ("float64" if data == "circle" else "float32"))
    check_output_dir(out, "phase", overwrite)
    rows = run_phase(config, progress=show_progress())
    with atomic_output_dir(out, "phase", overwrite) as tmp:
        write_phase(tmp, rows, config)
    columns = ("sigma", "K", "n_attractors", "n_memorized", "n_spurious", "n_saddle",
               "share_memorized", "share_spurious", "rule_generalized")
    click.echo("".join(f"{c:>17}" for c in columns))
    for row in rows:
        click.echo("".join(f"{row[c]:>17.4g}" if isinstance(row[c], float) else f"{row[c]:>17}"
                           for c in columns))
    click.echo(f"wrote {Path(out) / 'phase.csv'} and {Path(out) / 'phase.png'}")


@click.command()
@click.option("--K", "Ks", type=int, multiple=True, default=(2, 9, 1000), show_default=True,
              help="Numbers of circle points, one panel each.")
@click.option("--beta", "gamma", type=float, default=20.0, show_default=True,
              help="The kernel energy's inverse temperature γ = 1/(2σ²) (eq. 13's β).")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="Trained 2D toy models (repeatable): also draw each one's learned "
                   "energy (PF-ODE likelihood) beside the exact one of its training set, "
                   "with the attractors its samples fall into.")
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=0.387,
              show_default=True,
              help="Noise level of the learned and exact energies (t = 0.15; with --checkpoint).")
@click.option("--resolution", type=click.IntRange(min=2, max=2000), default=100,
              show_default=True,
              help="Grid points per axis of the learned energy (with --checkpoint).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@overwrite_option
def landscape(Ks, gamma, checkpoints, sigma, resolution, out, overwrite):
    """2D energy landscapes of unit-circle data with their attractors (project page Fig. 2);
    with --checkpoint, those learned by trained models too."""
    given = [f"--{name}" for name in ("sigma", "resolution") if click.get_current_context()
             .get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if given and not checkpoints:
        raise UserError(f"{', '.join(given)}: only with --checkpoint (the learned energy); "
                        "the exact landscapes use --beta")
    config = LandscapeConfig(Ks=tuple(Ks), gamma=gamma)
    check_output_dir(out, "landscape", overwrite)
    panels = run_landscape(config)
    rows = (checkpoint_rows(checkpoints, sigma=sigma, resolution=resolution)
            if checkpoints else [])
    with atomic_output_dir(out, "landscape", overwrite) as tmp:
        write_landscape(tmp, panels, config)
        if rows:
            write_learned(tmp, rows, sigma)
    for row in rows:
        click.echo(f"K = {row['K']} (trained): {len(row['counts'])} learned attractors, "
                   f"{int(row['memorized'].sum())} memorized")
    for panel in panels:
        kinds = ", ".join(f"{(panel.kinds == k).sum()} {k}" for k in np.unique(panel.kinds))
        click.echo(f"{panel.title}: {kinds}")
    click.echo(f"wrote {Path(out) / 'attractors.csv'} and {Path(out) / 'landscape.png'}")


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: fractions.csv, capacities.json, figures, cache/ (resumable).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.iterations=200 (repeatable).")
@click.option("--dry-run", is_flag=True, help="Check the config and show what would run.")
@click.option("--executor", type=RegistryChoice(EXECUTORS), default=None,
              help="Where each K runs (overrides executor.kind): "
                   + registry_help(EXECUTORS))
@click.option("--workers", type=int, default=None,
              help="Parallel K: local worker processes, or CPUs of a private Ray instance.")
@click.option("--address", default=None,
              help="Ray cluster to join (e.g. auto or ray://head:10001); the run folder "
                   "must be on a file system every node sees.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads per K (overrides executor.cpus_per_task) [1].")
@click.option("--overwrite", is_flag=True,
              help="Start afresh in an --out that another command (or not memgen) wrote: "
                   "its contents are deleted. A sweep's own folder is resumed without it.")
def sweep(config_path, out, overrides, dry_run, executor, workers, address, threads, overwrite):
    """Fractions of memorized/spurious/generalized samples against K (paper Fig. 2).

    Stages are cached by a hash of the settings they read: rerunning resumes a killed
    sweep, and changing a setting recomputes only what depends on it. Each K runs here
    (default), in --workers local processes, or as a Ray task (--executor ray)."""
    flags = {"kind": executor, "workers": workers, "address": address,
             "cpus_per_task": threads}
    executor_flags = {key: value for key, value in flags.items() if value is not None}
    config = load_config(config_path, overrides, {"executor": executor_flags})
    check_device(config.device)
    check_sweep_dir(Path(out), overwrite)
    if dry_run:
        for line in plan(config, Path(out)):
            click.echo(line)
        return
    result = run_sweep(config, Path(out), progress=show_progress(), overwrite=overwrite,
                       config_file=config_path, argv=command_argv(),
                       log=echo_verbose if verbose_enabled() else None)
    _print_sweep(result)


def _print_sweep(result: SweepResult) -> None:
    """One screen: fractions with 95% intervals, null rates and the precision of the
    evaluated samples (and of held-out data) per K; the capacities; τ_mem if measured."""
    table = result.table
    extra = _extra_columns(result.rows)
    click.echo(f"{'K':>6}  {'memorized':^22}{'spurious':^22}{'generalized':^22}  null m/s/g"
               "      precision (held-out)")
    for i, K in enumerate(table.K):
        cells = "".join(f"{table.fractions[i, j]:6.3f} [{table.lo[i, j]:.3f},{table.hi[i, j]:.3f}] "
                        for j in range(3))
        click.echo(f"{K:>6}  {cells} {extra[i]}")
    footnote = _null_footnote(result.rows)
    if footnote:
        click.echo(footnote)
    for name in ("MC", "SC", "GC"):
        click.echo(describe(result.capacities[name]))
    if result.timescale is not None:
        _print_timescale(result.timescale)
    if result.census is not None:
        click.echo(peak_line(result.census))
    click.echo(f"report: {result.run / 'report.html'}")


def _print_timescale(timescale: dict) -> None:
    censored = set(timescale["tau_mem_censored"])

    def shown(K: str, tau) -> str:
        return "-" if tau is None else ("≤" if int(K) in censored else "") + str(tau)

    taus = "  ".join(f"K={K}: {shown(K, t)}" for K, t in timescale["tau_mem"].items())
    click.echo(f"τ_mem (steps to memorized ≥ {timescale['threshold']}): {taus}")
    fit = timescale.get("fit")
    if fit:
        click.echo(f"τ_mem ∝ K^b: b = {fit['exponent']:.2f} (95% CI {fit['ci95'][0]:.2f}–"
                   f"{fit['ci95'][1]:.2f}, {fit['n_points']} K)")
    else:
        click.echo(f"τ_mem ∝ K^b: no fit ({timescale.get('fit_note', '')})")


def _extra_columns(rows) -> list[str]:
    """Per K: the null rates m/s/g (marked * when held-out data ran short for the null
    run) and the precision (held-out baseline), '-' if absent; rows: fractions.csv's cells
    (``SweepResult.rows``)."""
    def number(r, key, digits):
        return f"{float(r[key]):.{digits}f}" if r.get(key) else "-"

    rows = sorted(rows, key=lambda r: int(r["K"]))
    return ["/".join(number(r, f"null_{n}", 2) for n in LABEL_NAMES)
            + ("*" if _null_short(r) else " ")
            + f" {number(r, 'precision', 3):>9} ({number(r, 'baseline_precision', 3)})"
            for r in rows]


def _null_short(row: dict) -> bool:
    """The null run of this fractions.csv row had fewer samples than the measured sets."""
    sizes = [(row.get(f"null_{n}"), row.get(n)) for n in ("n_eval", "n_synth")]
    return any(a and b and int(float(a)) < int(float(b)) for a, b in sizes)


def _null_footnote(rows) -> str | None:
    short = [r for r in rows if _null_short(r)]
    if not short:
        return None
    sizes = ", ".join(f"K={r['K']}: {r['null_n_eval']}/{r['null_n_synth']} instead of "
                      f"{r['n_eval']}/{r['n_synth']}" for r in short)
    return ("* held-out data too small for the null run at the measured sizes "
            f"(evaluated/synthetic: {sizes}); a smaller S′ gives a lower spurious null rate")
