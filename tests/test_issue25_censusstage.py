"""The attractor census as a sweep stage (issue #25, item 2: "run it on the main job's
models as part of the sweep report"): ``analysis.census``, the endpoints and census stages
of ``memgen.experiments.census_stage``, RUN/census.csv, census_spurious.csv, census.png.

Known answers: the stage's files equal ``census_at_radii`` run here on endpoints drawn
here by ``memgen.diffusion.generate`` (the default sampler is the schedule's deterministic
one) and on the held-out subset the docstring states; the cache is counted call by call.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import memgen.experiments.census_stage as census_stage
from memgen.cli import cli
from memgen.diffusion.generate import GenerateConfig, generate, name_seed
from memgen.diffusion.loaders import load_denoiser
from memgen.errors import UserError
from memgen.experiments.census_stage import census_keys
from memgen.experiments.config import load_config
from memgen.experiments.stages import load_pool, run_K, split
from memgen.experiments.sweep import run_sweep
from memgen.io import load_samples
from memgen.probes.census import census_at_radii, summary_row

TINY = """name: census stage test
Ks: [2, 5]
data: {name: circle}
model: {kind: exact, schedule: ve}
sample: {n_eval: 30, synth_multiplier: 2, min_synth: 30, steps: 20, final_denoise: true}
measure: {bootstrap: 10}
analysis: {census: true, census_n: 40, census_steps: 12, census_fractions: [0.05, 0.3]}
"""
FRACTIONS = [0.05, 0.3]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def swept(tiny, tmp_path_factory):
    """The tiny sweep with the census on, through the CLI: (run folder, its output)."""
    out = tmp_path_factory.mktemp("census") / "run"
    result = CliRunner().invoke(cli, ["sweep", str(tiny), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out, result.output


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_the_stage_equals_census_at_radii_on_endpoints_drawn_here(tiny, swept, tmp_path):
    """Per K: Heun (VE's deterministic sampler) from the exact denoiser with the name
    seed of "endpoints", drawn here, gives the stage's endpoints; census_at_radii on them,
    S_K and M held-out images of a permutation seeded alike gives census.json and the
    rows of RUN/census.csv."""
    run, _ = swept
    config = load_config(tiny)
    pool, seed = load_pool(config), name_seed("endpoints")
    table = _csv(run / "census.csv")
    assert [(r["K"], float(r["fraction"])) for r in table] == [
        (str(K), f) for K in (2, 5) for f in FRACTIONS]
    for K in (2, 5):
        train, heldout = split(pool, K, config)
        model = load_denoiser(exact=train, schedule="ve")
        gen = GenerateConfig(sampler="heun", steps=12, n=40, seed=seed, final_denoise=True,
                             name="mine", clip=False)
        mine = load_samples(generate(model.denoiser, (2,), model.schedule, gen, tmp_path / str(K),
                                     progress=False), own=True)
        folder = next(p for p in (run / "cache").glob("census-*")
                      if json.loads((p / "DONE.json").read_text())["K"] == K)
        ends = next(p for p in (run / "cache").glob("endpoints-*")
                    if json.loads((p / "DONE.json").read_text())["K"] == K)
        np.testing.assert_array_equal(load_samples(ends / "endpoints.npz", own=True), mine)
        held = heldout[np.sort(np.random.default_rng(seed).permutation(len(heldout))[:40])]
        direct = census_at_radii(mine, train, held, FRACTIONS)
        record = json.loads((folder / "census.json").read_text())
        assert record["heldout_median"] == direct.heldout_median
        rows = [r for r in table if r["K"] == str(K)]
        for row, got, csv_row in zip(direct.rows, record["radii"], rows):
            want = summary_row(row)
            assert json.dumps({k: got[k] for k in want}) == json.dumps(want)  # NaN too
            assert {k: float(csv_row[k]) for k in want} == pytest.approx(want, rel=1e-15,
                                                                         nan_ok=True)
            assert got["null_n_points"] == 40 and got["n_points"] == 40


def test_outputs_figure_report_and_printed_peak(swept):
    run, output = swept
    rows = _csv(run / "census.csv")
    assert len(rows) == 2 * len(FRACTIONS)
    for column in ("K", "steps", "fraction", "radius", "n_clusters", "n_spurious",
                   "mass_memorized", "mass_spurious", "mass_singleton", "null_mass_spurious"):
        assert column in rows[0]
    for r in rows:  # the three masses split the endpoints
        assert sum(float(r[f"mass_{k}"]) for k in ("memorized", "spurious", "singleton")) \
            == pytest.approx(1.0)
    spurious = _csv(run / "census_spurious.csv")
    assert len(spurious) == sum(int(r["n_spurious"]) for r in rows)
    assert (run / "census.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run / "report.html").read_text()
    assert 'alt="census.png"' in report and "Radius rule:" in report
    peak = max(rows, key=lambda r: float(r["mass_spurious"]) if r["fraction"] == "0.3" else -1)
    line = next(line for line in output.splitlines() if line.startswith("census, peak"))
    if float(peak["mass_spurious"]) > 0:
        assert f"f=0.3: {float(peak['mass_spurious']):.3f} at K={peak['K']}" in line
        part = line.split("f=0.3: ")[1].split(";")[0]
        assert f"of {peak['null_n_points']} held-out" in part
        below = float(peak["mass_spurious"]) <= float(peak["null_mass_spurious"])
        assert ("not above its null" in part) == below
    else:
        assert "f=0.3: none" in line


def test_the_printed_peak_says_when_it_is_not_above_its_null():
    """A peak at or below the held-out null is named so (the trial's Gaussian on the toy
    printed "0.040 … null 0.930" as a peak)."""
    rows = [{"K": 2, "steps": 10, "fraction": 0.1, "radius": 0.5, "n_spurious": 3,
             "mass_memorized": 0.0, "mass_spurious": 0.04, "mass_singleton": 0.96,
             "null_mass_spurious": 0.93, "null_n_points": 40, "heldout_median": 5.0}]
    line = census_stage.peak_line(census_stage.CensusTable(tuple(rows), (), ()))
    assert "f=0.1: 0.040 at K=2" in line and "null 0.930 of 40 held-out, not above" in line


def _count(monkeypatch) -> dict[str, int]:
    calls = {"generate": 0, "census_at_radii": 0}
    for name in calls:
        original = getattr(census_stage, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(census_stage, name, counted)
    return calls


def test_rerun_reuses_the_cache_and_new_radii_reuse_the_endpoints(tiny, swept, tmp_path,
                                                                   monkeypatch):
    run = tmp_path / "run"
    config = load_config(tiny)
    calls = _count(monkeypatch)
    run_sweep(config, run, progress=False)
    assert calls == {"generate": 2, "census_at_radii": 2}  # one of each per K
    run_sweep(config, run, progress=False)
    assert calls == {"generate": 2, "census_at_radii": 2}
    run_sweep(load_config(tiny, ["analysis.census_fractions=[0.05,0.3,0.5]"]), run,
              progress=False)
    assert calls == {"generate": 2, "census_at_radii": 4}
    assert len(_csv(run / "census.csv")) == 6


def _done(run: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (run / "cache").glob("*/DONE.json")}


def test_switching_the_census_on_adds_its_stages_only_and_off_removes_its_files(tiny,
                                                                                tmp_path):
    """A finished sweep (as the main job's) gets its census by --set analysis.census=true
    without one other stage rerun; switched off again, no census file remains."""
    run = tmp_path / "run"
    run_sweep(load_config(tiny, ["analysis.census=false"]), run, progress=False)
    before = _done(run)
    assert not [p.name for p in run.iterdir() if p.name.startswith("census")]
    run_sweep(load_config(tiny), run, progress=False)
    after = _done(run)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(k.split("-")[0] for k in set(after) - set(before)) == [
        "census", "census", "endpoints", "endpoints"]
    assert (run / "census.csv").exists() and (run / "census_spurious.csv").exists()
    result = run_sweep(load_config(tiny, ["analysis.census=false"]), run, progress=False)
    assert result.census is None
    assert not [p.name for p in run.iterdir() if p.name.startswith("census")]
    assert "census.png" not in (run / "report.html").read_text()


HELD = np.zeros((5, 2), np.float32)


def _key(config, t_key="tk", checkpoint=None, heldout=HELD):
    return census_keys(t_key, checkpoint, heldout, config)


@pytest.mark.parametrize("change, endpoints_too", [
    ("analysis.census_n=41", True), ("analysis.census_sampler=ddim", True),
    ("analysis.census_steps=13", True), ("analysis.census_seed=5", True),
    ("sample.prior=forward", True), ("analysis.census_fractions=[0.05,0.4]", False)])
def test_each_setting_changes_the_key(tiny, change, endpoints_too):
    base, changed = _key(load_config(tiny)), _key(load_config(tiny, [change]))
    assert changed[1] != base[1]
    assert (changed[0] != base[0]) == endpoints_too


@pytest.mark.parametrize("change", [
    "analysis.census=false", "analysis.basins=true", "analysis.per_label=3",
    "sample.n_eval=31", "sample.steps=21", "sample.sampler=euler_maruyama",
    "sample.batch_size=7", "measure.delta_m=0.5", "sample.eval_seed=9"])
def test_unrelated_settings_leave_the_keys(tiny, change):
    assert _key(load_config(tiny, [change])) == _key(load_config(tiny))


def test_the_model_state_and_the_heldout_set_are_in_the_key(tiny):
    config = load_config(tiny)
    base = _key(config)
    assert _key(config, t_key="other")[0] != base[0]
    assert _key(config, checkpoint=Path("a/checkpoint-100.pt"))[0] != base[0]
    moved = _key(config, heldout=HELD + 1)
    assert moved[0] == base[0] and moved[1] != base[1]
    # the default seed is memgen census's: giving it explicitly changes nothing drawn
    explicit = load_config(tiny, [f"analysis.census_seed={name_seed('endpoints')}"])
    assert _key(explicit) == base


def test_the_default_sampler_follows_the_schedule(tiny):
    vp = load_config(tiny, ["model.schedule=vp"])
    ve = load_config(tiny)
    assert census_stage.census_sampler(vp) == "ddim"
    assert census_stage.census_sampler(ve) == "heun"
    assert census_stage.census_sampler(replace(ve, analysis=replace(
        ve.analysis, census_sampler="ddim"))) == "ddim"


BAD = {
    "analysis.census_sampler=ddpm": "analysis.census_sampler: ddpm draws noise",
    "analysis.census_sampler=euler_maruyama": "analysis.census_sampler: euler_maruyama draws",
    "analysis.census_sampler=nope": "analysis.census_sampler: 'nope' is not one of",
    "analysis.census_n=1": "analysis.census_n: must be at least 2, got 1",
    "analysis.census_steps=0": "analysis.census_steps: steps must be an integer >= 2",
    "analysis.census_steps=1": "analysis.census_steps: steps must be an integer >= 2",
    "analysis.census_fractions=[]": "analysis.census_fractions: give one or more positive",
    "analysis.census_fractions=[0.1,0]": "analysis.census_fractions: give one or more",
    "analysis.census_fractions=[0.1,-0.2]": "analysis.census_fractions: give one or more",
    "analysis.census_fractions=[0.1,0.1]": "analysis.census_fractions: each fraction may",
    "analysis.census_seed=-1": "analysis.census_seed: -1 is out of range",
}


@pytest.mark.parametrize("override", BAD)
def test_bad_values_are_one_line_errors(tiny, override):
    with pytest.raises(UserError) as err:
        load_config(tiny, [override])
    message = str(err.value)
    assert message.startswith(BAD[override]) and "\n" not in message


def test_vp_steps_beyond_the_ladder_are_refused(tiny):
    with pytest.raises(UserError, match=r"^analysis.census_steps: steps must be an integer "
                                        r"in \[1, 1000\], got 1001$"):
        load_config(tiny, ["model.schedule=vp", "analysis.census_steps=1001"])


def test_every_sweep_source_gets_a_census(tiny, tmp_path):
    """The census samples the model the generate stage samples (the source's sweep_model),
    so it runs where the other analyses do not: a training-free generalizer (the optimal
    Gaussian denoiser, analysable = False), and the authors' checkpoints are accepted."""
    config = load_config(tiny, ["model.kind=gaussian", "Ks=[5]"])
    (K5,) = run_sweep(config, tmp_path / "run", progress=False).results
    assert K5.census_folder is not None
    assert len(_csv(tmp_path / "run" / "census.csv")) == len(FRACTIONS)
    load_config(tiny, ["model.kind=checkpoints", "model.path=x", "data.split=reference"])


def test_the_cli_refuses_before_any_work(tiny, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["sweep", str(tiny), "--out", str(out),
                                      "--set", "analysis.census_sampler=ddpm"])
    assert result.exit_code != 0 and "analysis.census_sampler: ddpm draws noise" in result.output
    assert not out.exists()


def test_a_trained_network_gets_its_census(tmp_path):
    """model.kind network (the toy MLP, a few steps): the final checkpoint's endpoints are
    Heun's from that checkpoint, and the census rows carry its training steps."""
    toy = Path(__file__).parents[1] / "configs" / "toy2d.yaml"
    config = load_config(toy, ["Ks=[2]", "train.iterations=8", "train.batch_size=8",
                               "sample.steps=5", "sample.n_eval=10", "sample.min_synth=10",
                               "analysis.landscape=false", "analysis.census=true",
                               "analysis.census_n=12", "analysis.census_steps=6",
                               "analysis.census_fractions=[0.5]"])
    run = tmp_path / "run"
    result = run_sweep(config, run, progress=False)
    (K2,) = result.results
    assert K2.census_folder is not None and K2.checkpoint is not None
    model = load_denoiser(checkpoint=K2.checkpoint)
    gen = GenerateConfig(sampler="heun", steps=6, n=12, seed=name_seed("endpoints"),
                         final_denoise=True, name="mine", clip=False)
    mine = load_samples(generate(model.denoiser, (2,), model.schedule, gen, tmp_path / "mine",
                                 progress=False), own=True)
    ends = load_samples(K2.endpoints_folder / "endpoints.npz", own=True)
    np.testing.assert_array_equal(ends, mine)
    rows = _csv(run / "census.csv")
    assert [(r["K"], r["steps"], r["fraction"]) for r in rows] == [("2", "8", "0.5")]


def test_dry_run_names_the_census_stages(tiny, swept, tmp_path):
    run, _ = swept
    done = CliRunner().invoke(cli, ["sweep", str(tiny), "--out", str(run), "--dry-run"])
    assert done.exit_code == 0, done.output
    assert done.output.count("  endpoints: cached") == 2
    assert done.output.count("  census: cached") == 2
    fresh = CliRunner().invoke(cli, ["sweep", str(tiny), "--out", str(run), "--dry-run",
                                     "--set", "analysis.census_fractions=[0.2]"])
    assert fresh.output.count("  endpoints: cached") == 2
    assert fresh.output.count("  census: to run (new settings)") == 2


def test_a_vp_unet_census_equals_memgen_census_on_its_checkpoint(tmp_path):
    """The main job's kind of model (a digits U-Net, ε-prediction on the VP schedule, here
    the 45k-parameter width after a few steps): the stage's census.json equals that of
    ``memgen census --checkpoint`` given the same state, S_K and held-out images, with
    DDIM (VP's deterministic sampler) as RESULTS.md ran it."""
    images = Path(__file__).parents[1] / "configs" / "images-cpu.yaml"
    config = load_config(images, [
        "Ks=[2]", "model.preset=digits-8-w8", "train.iterations=4", "train.snapshots=[]",
        "sample.steps=3", "sample.n_eval=8", "executor.workers=1", "analysis.census=true",
        "analysis.census_n=10", "analysis.census_steps=4", "analysis.census_fractions=[0.5,1]"])
    pool = load_pool(config)
    K2 = run_K(tmp_path / "run", pool, 2, config)  # the stages, without the aggregate
    train, heldout = split(pool, 2, config)
    np.savez(tmp_path / "train.npz", samples=train)
    np.savez(tmp_path / "held.npz", samples=census_stage.null_set(heldout, config))
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, [
        "census", "--checkpoint", str(K2.checkpoint), "--train", str(tmp_path / "train.npz"),
        "--heldout", str(tmp_path / "held.npz"), "--n", "10", "--sampler", "ddim", "--steps",
        "4", "--radius-fraction", "0.5", "--radius-fraction", "1", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_samples(out / "endpoints.npz", own=True),
                                  load_samples(K2.endpoints_folder / "endpoints.npz", own=True))
    assert json.loads((out / "census.json").read_text()) == json.loads(
        (K2.census_folder / "census.json").read_text())
