"""Command line: flags → config dataclasses → library calls. No math here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from memgen import __version__
from memgen.cli_options import overwrite_option, run_guarded
from memgen.errors import UserError
from memgen.io import (atomic_file, atomic_output_dir, check_output_dir, check_output_file,
                       load_samples, write_json)

RULES = ("paper", "absolute")
METRICS = ("l2", "lpips-alex", "lpips-vgg", "lpips-alex-ref", "lpips-vgg-ref")
LIST_OPTIONS = ("--K", "--sigma")  # take several numbers: --K 2 9 1000


def expand_lists(args: list[str]) -> list[str]:
    """Rewrite ``--K 2 9 1000`` as ``--K 2 --K 9 --K 1000`` (click repeats options)."""
    out, current = [], None
    for token in args:
        if token in LIST_OPTIONS:
            current = token
            out.append(token)
            continue
        if current is not None and _is_number(token) and out[-1] != current:
            out.append(current)
        elif not _is_number(token):
            current = None
        out.append(token)
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class _Group(click.Group):
    """Accepts list options; errors as in :func:`memgen.cli_options.run_guarded`."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, expand_lists(list(args)))

    def invoke(self, ctx):
        return run_guarded(ctx, super().invoke)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memgen")
@click.option("--debug", is_flag=True,
              help="Show the traceback of any error (also MEMGEN_DEBUG=1).")
def cli(debug):
    """memgen: which generated samples are copies of training data (memorized), which are
    new but recurring attractors (spurious), and which are genuinely new (generalized)
    — Pham et al., "Memorization to Generalization", arXiv 2505.21777.

    A problem with the input is one line on stderr and exit status 1; an internal error
    exits 70; Ctrl-C exits 130. No command leaves a half-written output behind."""


@cli.command()
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
@click.option("--rule", type=click.Choice(RULES), default="paper", show_default=True,
              help="paper: ratio tests of eqs. 4-6; absolute: raw-distance thresholds "
                   "(the public reference code).")
@click.option("--delta-m", type=float, help="Memorization threshold [paper: 1/3; absolute: 0.03].")
@click.option("--delta-s", type=float, help="Spurious threshold [paper: 1/3; absolute: 0.02].")
@click.option("--metric", type=click.Choice(METRICS), default="l2", show_default=True,
              help="Distance d: Euclidean on pixels, or LPIPS (AlexNet/VGG16 backbone; -ref: "
                   "the public reference code's [0,1] inputs) — weights from "
                   "$MEMGEN_LPIPS_WEIGHTS or torch hub's checkpoints folder.")
@click.option("--k", type=int, help="Neighbours kept per set [5, or fewer for a small set].")
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="Null detection rate the calibrated thresholds allow.")
@click.option("--calibrate", is_flag=True,
              help="Label with the thresholds calibrated on --heldout.")
@click.option("--dedup", is_flag=True,
              help="Measure d2 against the nearest training image that is not a "
                   "near-duplicate of the first (memgen's extension of eq. 4 for training "
                   "sets with repeated images).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Draws the null and quality subsets from --heldout.")
@click.option("--memory-budget", type=float, default=512, show_default=True,
              help="MiB for one block of pairwise distances (and one streamed chunk).")
@click.option("--backend", type=click.Choice(["builtin", "faiss"]), default="builtin",
              show_default=True, help="Exact kNN engine (faiss: pip install 'memgen[faiss]').")
@click.option("--state", "state_path", type=click.Path(dir_okay=False),
              help="Restart file for a streamed --synth: an interrupted search resumes.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: summary.json, labels.npz.")
@overwrite_option
def classify(train_path, eval_path, synth_path, heldout_path, rule, delta_m, delta_s, metric, k,
             alpha, calibrate, dedup, seed, memory_budget, backend, state_path, out, overwrite):
    """Label every evaluated sample memorized, spurious or generalized (eqs. 4-6)."""
    from memgen.audit import ClassifyConfig, classify_sets, summary, write_audit

    config = ClassifyConfig(rule=rule, delta_m=delta_m, delta_s=delta_s, metric=metric, k=k,
                            alpha=alpha, calibrate=calibrate, seed=seed,
                            memory_budget=_mib(memory_budget), backend=backend, dedup=dedup)
    config.make_rule()  # reject bad thresholds and --out before reading any data
    if not 0 <= alpha < 1:
        raise UserError(f"--alpha {alpha}: a null detection rate lies in [0, 1)")
    if calibrate and not heldout_path:
        raise UserError("--calibrate needs held-out real data (--heldout)")
    check_output_dir(out, "classify", overwrite)
    train = load_samples(train_path, "--train")
    eval_set = load_samples(eval_path, "--eval")
    synth = _synth_set(synth_path)
    heldout = load_samples(heldout_path, "--heldout") if heldout_path else None
    audit = classify_sets(eval_set, train, synth, heldout, config, progress=True,
                          state=state_path)
    with atomic_output_dir(out, "classify", overwrite) as tmp:
        write_audit(tmp, audit)
    for warning in audit.warnings:
        click.echo(f"warning: {warning}", err=True)
    _print_summary(summary(audit))
    click.echo(f"wrote {Path(out) / 'summary.json'} and {Path(out) / 'labels.npz'}")


def _synth_set(path):
    """None, an in-memory array (one file), or a ShardSet (a folder or glob: streamed)."""
    if not path:
        return None
    if Path(path).is_file():
        return load_samples(path, "--synth")
    from memgen.metrics.shards import open_shards

    try:
        return open_shards(path)
    except ValueError as err:
        raise UserError(f"--synth: {err}") from None


@cli.command()
@click.argument("fractions_csv", type=click.Path(dir_okay=False))
@click.option("--epsilon", type=float, default=0.1, show_default=True,
              help="Error margin of eqs. 1 and 3.")
@click.option("--bootstrap", "n_resamples", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the JSON here.")
@overwrite_option
def capacities(fractions_csv, epsilon, n_resamples, seed, out, overwrite):
    """Memorization, spurious and generalization capacities (eqs. 1-3) of a fractions.csv."""
    from memgen.metrics.capacity import capacities as compute, describe, read_fraction_table

    _check_epsilon(epsilon)
    if n_resamples < 1:
        raise UserError(f"--bootstrap {n_resamples}: give at least 1 resample")
    if out:
        check_output_file(out, overwrite)
    result = compute(read_fraction_table(fractions_csv), epsilon, n_resamples, seed)
    payload = {name: c.as_dict() for name, c in result.items()}
    payload["epsilon"] = epsilon
    for c in result.values():
        click.echo(describe(c))
    if out:
        with atomic_file(out) as tmp:
            write_json(tmp, payload)


@cli.group()
def plot():
    """Figures: fraction curves (paper Fig. 2) and neighbour grids (paper Fig. 1)."""


@plot.command("fractions")
@click.argument("fractions_csv", type=click.Path(dir_okay=False))
@click.option("--epsilon", type=float, default=0.1, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file.")
@overwrite_option
def plot_fractions_cmd(fractions_csv, epsilon, out, overwrite):
    """Fractions of the three labels against K, with intervals and MC/SC/GC marked."""
    from memgen.metrics.capacity import capacities as compute, read_fraction_table
    from memgen.report.figures import plot_fractions

    _check_epsilon(epsilon)
    _check_image_file(out, overwrite)
    table = read_fraction_table(fractions_csv)
    caps = compute(table, epsilon, n_resamples=1)
    fig = plot_fractions(table.K, table.fractions, table.lo, table.hi,
                         capacities={n: c.value for n, c in caps.items()}, null=table.null)
    _save(fig, out, dpi=150)


@plot.command("phase")
@click.argument("phase_csv", type=click.Path(dir_okay=False))
@click.option("--title", default="", help="Figure title.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file.")
@overwrite_option
def plot_phase_cmd(phase_csv, title, out, overwrite):
    """Curves (one σ) or (K × β) heat maps (several σ) of a phase.csv."""
    from memgen.phase import read_phase
    from memgen.report.figures import plot_phase

    _check_image_file(out, overwrite)
    _save(plot_phase(read_phase(phase_csv), title=title), out, dpi=150)


@plot.command("neighbours")
@click.option("--train", "train_path", required=True, type=click.Path(dir_okay=False))
@click.option("--eval", "eval_path", required=True, type=click.Path(dir_okay=False))
@click.option("--synth", "synth_path", type=click.Path(dir_okay=False))
@click.option("--labels", "labels_path", required=True, type=click.Path(dir_okay=False),
              help="labels.npz written by memgen classify.")
@click.option("--per-label", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file.")
@overwrite_option
def plot_neighbours_cmd(train_path, eval_path, synth_path, labels_path, per_label, seed, out,
                        overwrite):
    """A few samples per label with their top-k training and synthetic neighbours."""
    from memgen.report.figures import plot_neighbours

    if per_label < 1:
        raise UserError(f"--per-label {per_label}: show at least 1 sample per label")
    _check_image_file(out, overwrite)
    train = load_samples(train_path, "--train")
    eval_set = load_samples(eval_path, "--eval")
    synth = load_samples(synth_path, "--synth") if synth_path else eval_set
    found = _load_labels(labels_path, len(eval_set), len(train), len(synth))
    fig = plot_neighbours(eval_set, train, synth, found["train_idx"], found["synth_idx"],
                          found["labels"], _choose(found["labels"], per_label, seed),
                          found["train_dist"], found["synth_dist"])
    _save(fig, out, dpi=120)


@cli.command()
@click.option("--data-root", type=click.Path(file_okay=False),
              help="Folder with the Fashion-MNIST IDX files [MEMGEN_DATA or the Debian path].")
@click.option("--K", "K", type=int, default=1000, show_default=True, help="Training-set size.")
@click.option("--n-eval", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@overwrite_option
def demo(data_root, K, n_eval, seed, out, overwrite):
    """Classify planted copies, blends and novel images built from real Fashion-MNIST,
    and compare the detected labels with the planted truth."""
    from memgen.demo import DemoConfig, run_demo

    check_output_dir(out, "demo", overwrite)
    result = run_demo(DemoConfig(K=K, n_eval=n_eval, seed=seed), data_root, out, progress=True,
                      overwrite=overwrite)
    _print_summary(result.summary)
    click.echo(result.confusion_text)
    click.echo(f"wrote {out}/: summary.json, labels.npz, demo.json, fractions.png, "
               "neighbours.png")


@cli.command()
@click.option("--data", type=click.Choice(["circle", "fmnist"]), default="circle",
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
@click.option("--max-iter", type=int, default=2000, show_default=True)
@click.option("--tol", type=float, default=1e-6, show_default=True,
              help="Stop when a step is shorter than tol × the patterns' RMS norm.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default=None,
              help="[float64 for the circle, float32 for images]")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@overwrite_option
def phase(data, sigmas, Ks, n_starts, starts, method, max_iter, tol, dtype, data_root, seed, out,
          overwrite):
    """Attractors of the exact energy −log p_σ against the load K (and σ): phase.csv."""
    from memgen.phase import PhaseConfig, run_phase, write_phase

    config = PhaseConfig(data=data, sigmas=tuple(sigmas), Ks=tuple(Ks), n_starts=n_starts,
                         starts=starts, method=method, tol=tol, max_iter=max_iter, seed=seed,
                         data_root=data_root,
                         dtype=dtype or ("float64" if data == "circle" else "float32"))
    check_output_dir(out, "phase", overwrite)
    rows = run_phase(config, progress=True)
    with atomic_output_dir(out, "phase", overwrite) as tmp:
        write_phase(tmp, rows, config)
    columns = ("sigma", "K", "n_attractors", "n_memorized", "n_spurious", "n_saddle",
               "share_memorized", "share_spurious", "rule_generalized")
    click.echo("".join(f"{c:>17}" for c in columns))
    for row in rows:
        click.echo("".join(f"{row[c]:>17.4g}" if isinstance(row[c], float) else f"{row[c]:>17}"
                           for c in columns))
    click.echo(f"wrote {Path(out) / 'phase.csv'} and {Path(out) / 'phase.png'}")


@cli.command()
@click.option("--K", "Ks", type=int, multiple=True, default=(2, 9, 1000), show_default=True,
              help="Numbers of circle points, one panel each.")
@click.option("--beta", type=float, default=20.0, show_default=True,
              help="Inverse temperature of the kernel energy (β = 1/(2σ²)).")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="Trained 2D toy models (repeatable): also draw each one's learned "
                   "energy (PF-ODE likelihood) beside the exact one of its training set, "
                   "with the attractors its samples fall into.")
@click.option("--sigma", type=float, default=0.387, show_default=True,
              help="Noise level of the learned and exact energies (t = 0.15).")
@click.option("--resolution", type=int, default=100, show_default=True,
              help="Grid points per axis of the learned energy.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@overwrite_option
def landscape(Ks, beta, checkpoints, sigma, resolution, out, overwrite):
    """2D energy landscapes of unit-circle data with their attractors (project page Fig. 2);
    with --checkpoint, those learned by trained models too."""
    from memgen.landscape import (LandscapeConfig, checkpoint_rows, run_landscape,
                                  write_landscape, write_learned)

    config = LandscapeConfig(Ks=tuple(Ks), beta=beta)
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


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: fractions.csv, capacities.json, figures, cache/ (resumable).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.iterations=200 (repeatable).")
@click.option("--dry-run", is_flag=True, help="Check the config and show what would run.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Where each K runs (overrides executor.kind): here or as Ray tasks.")
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
    from memgen.config import check_device, load_config
    from memgen.sweep import plan, run_sweep

    flags = {"kind": executor, "workers": workers, "address": address,
             "cpus_per_task": threads}
    overrides = list(overrides) + [f"executor.{key}={value}" for key, value in flags.items()
                                   if value is not None]
    config = load_config(config_path, overrides)
    check_device(config.device)
    check_output_dir(out, "sweep", overwrite)
    if dry_run:
        for line in plan(config, Path(out)):
            click.echo(line)
        return
    caps = run_sweep(config, Path(out), overwrite=overwrite)
    _print_sweep(Path(out), caps)


def _print_sweep(run: Path, caps: dict) -> None:
    """One screen: fractions with 95% intervals, null rates and the precision of the
    evaluated samples (and of held-out data) per K; the capacities; τ_mem if measured."""
    from memgen.metrics.capacity import Capacity, describe, read_fraction_table

    table = read_fraction_table(run / "fractions.csv")
    extra = _extra_columns(run / "fractions.csv")
    click.echo(f"{'K':>6}  {'memorized':^22}{'spurious':^22}{'generalized':^22}  null m/s/g"
               "      precision (held-out)")
    for i, K in enumerate(table.K):
        cells = "".join(f"{table.fractions[i, j]:6.3f} [{table.lo[i, j]:.3f},{table.hi[i, j]:.3f}] "
                        for j in range(3))
        click.echo(f"{K:>6}  {cells} {extra[i]}")
    footnote = _null_footnote(run / "fractions.csv")
    if footnote:
        click.echo(footnote)
    for name in ("MC", "SC", "GC"):
        click.echo(describe(Capacity.from_dict(name, caps[name])))
    if (run / "timescale.json").exists():
        _print_timescale(json.loads((run / "timescale.json").read_text()))
    click.echo(f"report: {run / 'report.html'}")


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


def _extra_columns(path: Path) -> list[str]:
    """Per K: the null rates m/s/g (marked * when held-out data ran short for the null
    run) and the precision (held-out baseline), '-' if absent."""
    import csv

    def number(r, key, digits):
        return f"{float(r[key]):.{digits}f}" if r.get(key) else "-"

    with path.open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["K"]))
    return ["/".join(number(r, f"null_{n}", 2) for n in ("memorized", "spurious", "generalized"))
            + ("*" if _null_short(r) else " ")
            + f" {number(r, 'precision', 3):>9} ({number(r, 'baseline_precision', 3)})"
            for r in rows]


def _null_short(row: dict) -> bool:
    """The null run of this fractions.csv row had fewer samples than the measured sets."""
    sizes = [(row.get(f"null_{n}"), row.get(n)) for n in ("n_eval", "n_synth")]
    return any(a and b and int(float(a)) < int(float(b)) for a, b in sizes)


def _null_footnote(path: Path) -> str | None:
    import csv

    with path.open(newline="") as f:
        short = [r for r in csv.DictReader(f) if _null_short(r)]
    if not short:
        return None
    sizes = ", ".join(f"K={r['K']}: {r['null_n_eval']}/{r['null_n_synth']} instead of "
                      f"{r['n_eval']}/{r['n_synth']}" for r in short)
    return ("* held-out data too small for the null run at the measured sizes "
            f"(evaluated/synthetic: {sizes}); a smaller S′ gives a lower spurious null rate")


def _save(fig, out: str, dpi: int) -> None:
    from memgen.report.figures import save_figure

    save_figure(fig, out, dpi)
    click.echo(f"wrote {out}")


def _mib(value: float) -> int:
    if not value > 0 or value == float("inf"):
        raise UserError("--memory-budget must be a positive number of MiB")
    return int(value * 2**20)


def _check_epsilon(epsilon: float) -> None:
    if not 0 < epsilon < 1:
        raise UserError(f"--epsilon {epsilon}: the capacities' error margin lies in (0, 1)")


IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _check_image_file(out: str, overwrite: bool) -> None:
    if Path(out).suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"--out {out}: give an image file name ending in "
                        f"{', '.join(IMAGE_SUFFIXES)}")
    check_output_file(out, overwrite)


def _print_summary(payload: dict) -> None:
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
    text = ("null rates at the calibrated thresholds (at the given ones: "
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
    from memgen.metrics.classify import LABEL_NAMES

    rng = np.random.default_rng(seed)
    chosen = {}
    for code, name in enumerate(LABEL_NAMES):
        members = np.flatnonzero(labels == code)
        chosen[name] = sorted(rng.choice(members, min(per_label, len(members)), replace=False))
    return chosen


def _register_analysis_commands() -> None:
    from memgen.cli_analysis import basins, hygiene
    from memgen.cli_diagnose import diagnose
    from memgen.cli_models import generate, train

    for command in (train, generate, hygiene, basins, diagnose):
        cli.add_command(command)


_register_analysis_commands()


def main(argv=None):
    """Entry point of the ``memgen`` console script."""
    cli.main(args=argv, prog_name="memgen")


if __name__ == "__main__":
    sys.exit(main())
