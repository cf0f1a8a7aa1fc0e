"""The attractor census inside a sweep (issue #25, item 2): per K, where the endpoints of
deterministic sampling go, at several radii, with the held-out null beside them.

With ``analysis.census``, each K's final state gets two cached stages:

    endpoints-<key>/endpoints.npz   M = census_n seeded noises carried down the deterministic
                                    ladder (census_sampler, census_steps; resumable shards,
                                    ``memgen.diffusion.generate``), as ``memgen census`` draws
                                    them;
    census-<key>/census.csv, spurious.csv, census.json
                                    ``memgen.probes.census.census_at_radii`` of the endpoints
                                    against S_K, the radii r = f · median_h min_i ‖h − y_i‖ set
                                    from the held-out split of that K (the images the classify
                                    stage draws its null rates from; M of them at most,
                                    :func:`null_set`), which are clustered alike as the null;
                                    written by ``write_census``.

The endpoints' key holds the model state (the train key and the state's file), the census
sampling settings and the sample section's start and clipping (prior, clip_denoised,
clip_range, final_denoise, stop_sigma: the same field as the sweep's sets; the sampler's
options stay at their defaults, where a ``SamplerSpec`` is deterministic); the census key
holds the endpoints' key, the fractions and the held-out set's content. So new radii reuse
the endpoints, and nothing else than these settings reruns either stage.

Which models: every model.kind. The endpoints are drawn from the model the generate stage
samples (the source's ``sweep_model``: a trained state, the exact denoiser of S_K, a
training-free generalizer, the authors' K.pt), so the census, unlike the analyses that need
memgen's own models (``Source.analysable``), runs on all of them.

Which states: the final state of each K only, as the other analyses (basins, curvature):
the census describes the model the sweep reports, and M endpoints per snapshot would
multiply its cost (the main job: about 30 s per K and state on one core) by the number of
snapshots for states whose fractions already show where memorization stands.

Across K (:func:`census_outputs`, from the aggregate): RUN/census.csv (one row per K and
radius), RUN/census_spurious.csv (every spurious attractor, with its two nearest training
images and its place between them) and RUN/census.png. Orchestration only.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memgen.diffusion.generate import (GenerateConfig, Sampling, discard_unrecorded, generate,
                                       name_seed)
from memgen.diffusion.samplers import option_names, sampler_spec
from memgen.diffusion.sources import SCHEDULES, model_source
from memgen.experiments.cache import fingerprint, is_done, key_fields, mark_done, stage_key
from memgen.experiments.config import SweepConfig
from memgen.io import atomic_file, load_samples
from memgen.probes.census import ENDPOINTS, KINDS, census_at_radii, write_census
from memgen.report.census_figure import plot_census
from memgen.report.figures import save_figure

# the sample settings the endpoints do not take from the sample section: the census has its
# own sampler and steps, the sampler's options stay at their defaults (deterministic there),
# and no sample depends on its batch
CENSUS_OWN = ("sampler", "steps", "batch_size", *option_names())
FILES = ("census.csv", "census_spurious.csv")  # what census_outputs writes besides the figure


@dataclass(frozen=True)
class CensusFolders:
    """The two cache folders of one K's census."""

    endpoints: Path  # endpoints-<key>: endpoints.npz
    census: Path  # census-<key>: census.csv, spurious.csv, census.json


def census_sampler(config: SweepConfig) -> str:
    """analysis.census_sampler, else the deterministic sampler of the model's schedule
    family (``deterministic_sampler``: ddim for VP, heun for VE)."""
    if config.analysis.census_sampler is not None:
        return config.analysis.census_sampler
    family = model_source(config.model).schedule_family(config.model)
    return SCHEDULES[family].deterministic_sampler


def census_seed(config: SweepConfig) -> int:
    """analysis.census_seed, else memgen census's default: the seed of the name "endpoints"."""
    seed = config.analysis.census_seed
    return name_seed(ENDPOINTS) if seed is None else seed


def endpoints_config(config: SweepConfig, image: bool) -> GenerateConfig:
    """How the endpoints are drawn: the sample section's start and clipping (not CENSUS_OWN),
    the census's sampler, steps, M and seed; image: clip the endpoints to [−1, 1]."""
    a = config.analysis
    start = key_fields(Sampling, config.sample, CENSUS_OWN)
    return GenerateConfig(**start, sampler=census_sampler(config), steps=a.census_steps,
                          n=a.census_n, seed=census_seed(config), name=ENDPOINTS,
                          batch_size=config.sample.batch_size,
                          shard_size=max(a.census_n // 4, 256), clip=image)


def census_keys(t_key: str, checkpoint: Path | None, heldout: np.ndarray,
                config: SweepConfig) -> tuple[str, str]:
    """(endpoints key, census key): the model state (train key, state file), the draw's
    settings but the batch (with the sampler's revision); then the fractions and the
    held-out set's content."""
    gen = endpoints_config(config, image=True)  # image: a property of the data, in t_key
    settings = {k: v for k, v in gen.record().items() if k not in ("batch_size", "clip")}
    state = None if checkpoint is None else checkpoint.name
    e_key = stage_key("endpoints", t_key, state, settings, sampler_spec(gen.sampler).revision)
    fractions = [float(f) for f in config.analysis.census_fractions]
    return e_key, stage_key("census", e_key, fractions, fingerprint(heldout))


def census_stage(run: Path, result, train: np.ndarray, heldout: np.ndarray, t_key: str,
                 config: SweepConfig, progress: bool = False) -> CensusFolders | None:
    """The census of one K's final state (a StageResult: its checkpoint, None for a model
    built from S_K) against S_K and its held-out split; None unless analysis.census."""
    if not config.analysis.census:
        return None
    e_key, c_key = census_keys(t_key, result.checkpoint, heldout, config)
    folders = CensusFolders(run / "cache" / f"endpoints-{e_key}", run / "cache" / f"census-{c_key}")
    path = _endpoints(folders.endpoints, result, train, config, progress)
    if not is_done(folders.census):
        folders.census.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        found = census_at_radii(load_samples(path, ENDPOINTS, own=True), train,
                                null_set(heldout, config), config.analysis.census_fractions)
        write_census(folders.census, found)
        mark_done(folders.census, {"K": result.K, "stage": "census",
                                   "seconds": time.perf_counter() - t0})
    return folders


def null_set(heldout: np.ndarray, config: SweepConfig) -> np.ndarray:
    """The held-out images of the radius rule and the null: M = census_n of the held-out
    split drawn by a permutation seeded with the census seed (in their order in the split),
    or all of it when it holds no more than M. The null clusters as many points as there
    are endpoints where it can: a recurring cluster is likelier among more points."""
    n = config.analysis.census_n
    if len(heldout) <= n:
        return heldout
    keep = np.random.default_rng(census_seed(config)).permutation(len(heldout))[:n]
    return heldout[np.sort(keep)]


def _endpoints(folder: Path, result, train: np.ndarray, config: SweepConfig,
               progress: bool) -> Path:
    """endpoints.npz of the state, drawn unless done (the generate stage's contract)."""
    if not is_done(folder):
        t0 = time.perf_counter()
        model = model_source(config.model).sweep_model(config.model, result.checkpoint, train,
                                                       config.device)
        gen = endpoints_config(config, image=train.ndim == 4)
        discard_unrecorded(folder, ENDPOINTS)  # the key fixes the settings: redraw, not refuse
        generate(model.denoiser, train.shape[1:], model.schedule, gen, folder, data=train,
                 device=config.device, progress=progress, source=model.source)
        mark_done(folder, {"K": result.K, "stage": ENDPOINTS, "n": gen.n, "seed": gen.seed,
                           "seconds": time.perf_counter() - t0})
    return folder / f"{ENDPOINTS}.npz"


def census_plan(run: Path, t_key: str, checkpoint: Path | None, heldout: np.ndarray,
                config: SweepConfig) -> dict[str, Path]:
    """For --dry-run: the folder of each census stage of one K's final state ({} when off)."""
    if not config.analysis.census:
        return {}
    e_key, c_key = census_keys(t_key, checkpoint, heldout, config)
    return {"endpoints": run / "cache" / f"endpoints-{e_key}",
            "census": run / "cache" / f"census-{c_key}"}


# ------------------------------------------------------------------------- across K


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as text) of a CSV file."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or ()), list(reader)


@dataclass(frozen=True)
class CensusTable:
    """The census of every K that has one, as census.csv and census_spurious.csv hold it:
    each K's own census.csv and spurious.csv cells (text, as written), after K, steps (its
    state's training steps, empty without training) and, in ``rows``, heldout_median."""

    rows: tuple[dict[str, str], ...]
    spurious: tuple[dict[str, str], ...]
    spurious_fields: tuple[str, ...]


def census_table(results) -> CensusTable:
    """The cached census of each K (StageResults with a census_folder), by K."""
    rows, spurious, fields = [], [], ()
    for r in sorted(results, key=lambda r: r.K):
        if r.census_folder is None:
            continue
        head = {"K": str(r.K), "steps": "" if r.steps is None else str(r.steps)}
        median = json.loads((r.census_folder / "census.json").read_text())["heldout_median"]
        rows += [{**head, "heldout_median": repr(median), **row}
                 for row in _read_csv(r.census_folder / "census.csv")[1]]
        names, found = _read_csv(r.census_folder / "spurious.csv")
        fields = (*head, *names)
        spurious += [{**head, **row} for row in found]
    return CensusTable(tuple(rows), tuple(spurious), fields)


def census_outputs(run: Path, results, title: str = "") -> tuple[CensusTable | None, list[Path]]:
    """RUN/census.csv, census_spurious.csv and census.png from the cached census of each K:
    (the table, [the figure]); (None, []) and nothing written when no K has a census (the
    aggregate has removed an earlier run's files)."""
    table = census_table(results)
    if not table.rows:
        return None, []
    _write(run / FILES[0], table.rows, list(table.rows[0]))
    _write(run / FILES[1], table.spurious, list(table.spurious_fields))
    save_figure(plot_census(**figure_data(table.rows), title=title), run / "census.png",
                dpi=130)
    return table, [run / "census.png"]


def _write(path: Path, rows, fields: list[str]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def figure_data(rows) -> dict:
    """plot_census's arrays from census.csv's rows: Ks (nK,), fractions (nF,), mass
    (nK, nF, 3) of the memorized, spurious and singleton endpoints, n_spurious, null
    (the held-out null's spurious mass) and radius (nK, nF); NaN where a K lacks a
    fraction."""
    Ks = sorted({int(r["K"]) for r in rows})
    fractions = sorted({float(r["fraction"]) for r in rows})
    shape = (len(Ks), len(fractions))
    out = {"mass": np.full((*shape, len(KINDS)), np.nan)}
    out |= {name: np.full(shape, np.nan) for name in ("n_spurious", "null", "radius")}
    for r in rows:
        at = Ks.index(int(r["K"])), fractions.index(float(r["fraction"]))
        out["mass"][at] = [float(r[f"mass_{kind}"]) for kind in KINDS]
        out["n_spurious"][at] = float(r["n_spurious"])
        out["null"][at] = float(r["null_mass_spurious"])
        out["radius"][at] = float(r["radius"])
    return {"Ks": Ks, "fractions": fractions, **out}


def peak_line(table: CensusTable) -> str:
    """The printed summary: per radius fraction, the largest spurious endpoint mass across
    K, its K and radius, its clusters, the null's spurious mass in the same row (with the
    number of held-out points clustered, and "not above its null" where it is not) and the
    spurious endpoints' precision beside the held-out one (on the data, where given)."""
    data = figure_data(table.rows)
    by_row = {(int(r["K"]), float(r["fraction"])): r for r in table.rows}
    parts = []
    for j, f in enumerate(data["fractions"]):
        spurious = data["mass"][:, j, 1]
        i = int(np.nanargmax(spurious))
        if not spurious[i] > 0:
            parts.append(f"f={f:g}: none")
            continue
        row = by_row[data["Ks"][i], f]
        quality = (f", precision {float(row['precision_spurious']):.2f} (held-out "
                   f"{float(row['heldout_precision']):.2f})" if "precision_spurious" in row
                   else "")
        null, n_null = data["null"][i, j], int(row["null_n_points"])
        below = ", not above its null" if not spurious[i] > null else ""
        parts.append(f"f={f:g}: {spurious[i]:.3f} at K={data['Ks'][i]} "
                     f"(r={data['radius'][i, j]:.3g}, {int(data['n_spurious'][i, j])} "
                     f"clusters, null {null:.3f} of {n_null} held-out{below}{quality})")
    return "census, peak spurious endpoint mass by radius: " + "; ".join(parts)
