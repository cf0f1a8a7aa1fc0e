"""Issue #24 item 5, samplers by concern: each sampler is described by its ``SamplerSpec``
alone (a dummy one registered here reaches the CLI, the sweep config, the generate key and
generate itself), the specs' ``deterministic`` says what the samplers do, and every
sampler, prior and recovery run gives the numbers of the code before the split, to the bit
(sha256 digests computed from main at 22fd400, before any change)."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from memgen.cli import cli
from memgen.diffusion.generate import GenerateConfig, generate
from memgen.diffusion.ladders import ve_sigmas
from memgen.diffusion.priors import GaussianPrior, forward_prior, initial_noise
from memgen.diffusion.rng import StackedGenerator
from memgen.diffusion.samplers import SAMPLERS, SamplerOption, SamplerSpec, get_sampler
from memgen.diffusion.schedules import VESchedule
from memgen.experiments.config import load_config
from memgen.probes.recovery import RecoveryConfig, recovery_probability

F64, F32 = torch.float64, torch.float32
PATTERNS = torch.tensor([[0.9, -0.4, 0.1], [-0.7, 0.5, 0.3], [0.2, 0.8, -0.6]], dtype=F64)
CONFIGS = __import__("pathlib").Path(__file__).parents[1] / "configs"

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def exact(x, sigma):
    """The exact denoiser of PATTERNS: softmax(−‖x − y_i‖²/2σ²) · y."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1)
    y = PATTERNS.to(x)
    logits = -((x[:, None, :] - y[None]) ** 2).sum(-1) / (2 * sigma**2)
    return torch.softmax(logits, -1) @ y


# ------------------------------------------------- (a) a sampler is its registry entry


def _constant(denoiser, x, sigmas, *, clip=None, generator=None, callback=None, options=None):
    """A dummy sampler: every sample ends at 0.25."""
    return torch.full_like(x, 0.25)


DUMMY = SamplerSpec("dummy", _constant, "Dummy", "every sample at 0.25 (a test's)",
                    deterministic=True, scale_invariant=True, revision=5)


@pytest.fixture
def dummy(monkeypatch):
    monkeypatch.setitem(SAMPLERS, "dummy", DUMMY)
    return DUMMY


def test_a_registered_sampler_is_offered_and_described_by_generate_help(dummy):
    text = CliRunner().invoke(cli, ["generate", "--help"], terminal_width=200).output
    assert "[ddpm|ddim|euler_maruyama|heun|dummy]" in text
    assert "every sample at 0.25 (a test's)" in text  # its description, under Samplers


def test_a_registered_sampler_runs_from_the_cli(dummy, tmp_path):
    train = tmp_path / "train.npz"
    np.savez(train, samples=PATTERNS.numpy())
    result = CliRunner().invoke(cli, ["generate", "--exact", str(train), "--n", "4",
                                      "--sampler", "dummy", "--steps", "5",
                                      "--out", str(tmp_path / "gen")])
    assert result.exit_code == 0, result.output
    assert (np.load(tmp_path / "gen" / "samples.npz")["samples"] == 0.25).all()
    refused = CliRunner().invoke(cli, ["generate", "--exact", str(train), "--n", "4",
                                       "--sampler", "dummy", "--eta", "0.5",
                                       "--out", str(tmp_path / "eta")])
    assert refused.exit_code == 1
    assert "--eta is DDIM's η; the dummy sampler has none" in refused.output


def test_a_registered_sampler_is_taken_by_the_sweep_config_and_keyed_by_its_revision(
        dummy, monkeypatch):
    import memgen.experiments.stages as stages

    config = load_config(CONFIGS / "tiny.yaml", ["sample.sampler=dummy"])
    assert config.sample.sampler == "dummy"
    key = stages.generate_key("eval", 8, 1, "tk", None, config)
    monkeypatch.setitem(SAMPLERS, "dummy", dataclasses.replace(DUMMY, revision=None))
    assert stages.generate_key("eval", 8, 1, "tk", None, config) != key
    with pytest.raises(ValueError, match="sample.eta: η is DDIM's, but the sampler is dummy"):
        load_config(CONFIGS / "tiny.yaml", ["sample.sampler=dummy", "sample.eta=0.5"])
    monkeypatch.delitem(SAMPLERS, "dummy")
    with pytest.raises(ValueError, match="sample.sampler: 'dummy' is not one of"):
        load_config(CONFIGS / "tiny.yaml", ["sample.sampler=dummy"])


def test_a_registered_sampler_runs_through_generate(dummy, tmp_path):
    config = GenerateConfig(n=5, sampler="dummy", steps=4, batch_size=2, clip=False)
    path = generate(exact, (3,), VESchedule(), config, tmp_path, progress=False)
    assert (np.load(path)["samples"] == 0.25).all()
    record = json.loads((tmp_path / "samples.json").read_text())
    assert record["identity"]["sampler"] == "dummy"
    assert record["identity"]["sampler_revision"] == 5 and record["identity"]["eta"] is None


def test_recovery_reads_the_specs(dummy, monkeypatch):
    """A deterministic spec gets no generator; a sampler that is not scale-invariant is
    refused (recovery runs every row on its own ladder σ·u)."""
    seen = []
    spy = dataclasses.replace(DUMMY, run=lambda *a, generator=None, **k: seen.append(generator)
                              or torch.zeros_like(a[1]))
    monkeypatch.setitem(SAMPLERS, "dummy", spy)
    recovery_probability(exact, PATTERNS, [0.5], RecoveryConfig(n_trials=2, sampler="dummy"))
    monkeypatch.setitem(SAMPLERS, "dummy", dataclasses.replace(spy, deterministic=False))
    recovery_probability(exact, PATTERNS, [0.5], RecoveryConfig(n_trials=2, sampler="dummy"))
    assert seen[0] is None and isinstance(seen[1], StackedGenerator)
    monkeypatch.setitem(SAMPLERS, "dummy", dataclasses.replace(DUMMY, scale_invariant=False))
    with pytest.raises(ValueError, match="'dummy' is not scale-invariant"):
        RecoveryConfig(sampler="dummy")


# ------------------------------------------ (b) deterministic means it: no draws at all


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_deterministic_specs_draw_nothing_and_stochastic_ones_draw(name):
    spec = SAMPLERS[name]
    x = initial_noise((16, 3), 4.0, torch.Generator().manual_seed(0), dtype=F64)
    sigmas = torch.cat([ve_sigmas(4.0, 0.05, 8), torch.zeros(1, dtype=F64)])
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2),
            StackedGenerator(range(16)), None]
    before = [g.get_state() for g in gens[:2]]
    outs = [spec.run(exact, x, sigmas, generator=g) for g in gens]
    after = [g.get_state() for g in gens[:2]]
    same = [torch.equal(outs[0], out) for out in outs[1:]]
    if spec.deterministic:
        assert all(same) and all(torch.equal(a, b) for a, b in zip(before, after))
    else:
        assert not any(same) and not any(torch.equal(a, b) for a, b in zip(before, after))


def test_ddim_draws_once_eta_is_positive():
    """DDIM's spec is deterministic at its default η = 0 only."""
    x = initial_noise((16, 3), 4.0, torch.Generator().manual_seed(0), dtype=F64)
    run = lambda seed: get_sampler("ddim")(  # noqa: E731
        exact, x, [4.0, 1.0, 0.2, 0.0], generator=torch.Generator().manual_seed(seed),
        options={"eta": 0.5})
    assert not torch.equal(run(1), run(2))


# ------------------------------------------------ (c) the numbers of main, to the bit


class Net:
    """A denoiser with the protocol's fast paths (at_levels, residuals_at_levels): the
    residual D − x = −σ·tanh(x W + σ)."""

    W = torch.tensor([[0.5, -0.3, 0.2], [0.1, 0.4, -0.6], [-0.2, 0.3, 0.7]], dtype=F64)

    def eps(self, x, s):
        return torch.tanh(x @ self.W.to(x) + s)

    def __call__(self, x, sigma):
        return x - float(sigma) * self.eps(x, float(sigma))

    def at_levels(self, levels, x):
        return [lambda y, s=s: y - s * self.eps(y, s) for s in levels]

    def residuals_at_levels(self, levels, x):
        return [-s for s in levels], lambda y, i: self.eps(y, levels[i])


def digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    head = f"{t.dtype}{tuple(t.shape)}".encode()
    return hashlib.sha256(head + t.numpy().tobytes()).hexdigest()[:16]


def sampler_digests(name: str) -> dict:
    """case → output digest for one sampler: both generators, two dtypes and batch sizes
    (16 × 2 numbers a step: torch's noise drawn in blocks; 5 × 3: a step at a time), with
    and without clipping, DDIM at η = 0 and 0.5, the plain and the fast denoiser."""
    out = {}
    sigmas = torch.cat([ve_sigmas(4.0, 0.05, 12), torch.zeros(1, dtype=F64)])
    for dtype, batch in ((F64, 16), (F32, 5)):
        x = 3 * torch.randn(batch, 3, generator=torch.Generator().manual_seed(1)).to(dtype)
        if dtype == F64:
            x = x[:, :2].contiguous()
            den = lambda y, s: exact(torch.cat([y, y[:, :1] * 0], 1), s)[:, :2]  # noqa: E731
        else:
            den = exact
        for dname, d in (("exact", den), ("net", Net() if dtype == F32 else den)):
            for clip in (None, (-0.5, 0.5)):
                for eta in ((0.0, 0.5) if name == "ddim" else (None,)):
                    for gname in ("stacked", "torch"):
                        gen = (StackedGenerator([(7, i) for i in range(batch)])
                               if gname == "stacked" else torch.Generator().manual_seed(3))
                        got = get_sampler(name)(d, x, sigmas, clip=clip, generator=gen,
                                                options=None if eta is None else {"eta": eta})
                        out[f"{name}/{dtype}/{dname}/{clip}/{eta}/{gname}"] = digest(got)
    return out


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_give_mains_numbers(name):
    got = sampler_digests(name)
    assert got == {k: v for k, v in EXPECTED.items() if k.startswith(f"{name}/")}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_recovery_gives_mains_numbers(name):
    """Recovery's per-row scaled streams (now ``StackedGenerator(scale=...)``, drawn in
    blocks) give the numbers of its former subclass, drawn a step at a time."""
    for dtype in (F64, F32):
        config = RecoveryConfig(n_trials=3, sampler=name, steps=8, seed=5)
        rec = recovery_probability(exact, PATTERNS.to(dtype), [0.3, 1.5], config)
        assert digest(rec.distance) == EXPECTED[f"recovery/{name}/{dtype}"]


def test_priors_give_mains_numbers():
    gen = StackedGenerator([(2, i) for i in range(4)])
    assert digest(GaussianPrior(2.0).sample((4, 3), gen, dtype=F32)) == EXPECTED["prior/standard"]
    assert (digest(forward_prior(PATTERNS, 1.5).sample((4, 3), gen, dtype=F64))
            == EXPECTED["prior/forward"])
    assert digest(initial_noise((4, 3), 3.0, gen, dtype=F64)) == EXPECTED["initial_noise"]


EXPECTED = {
    'ddim/torch.float32/exact/(-0.5, 0.5)/0.0/stacked': 'e2cb5323787f480c',
    'ddim/torch.float32/exact/(-0.5, 0.5)/0.0/torch': 'e2cb5323787f480c',
    'ddim/torch.float32/exact/(-0.5, 0.5)/0.5/stacked': 'ec6b54db8b3e0243',
    'ddim/torch.float32/exact/(-0.5, 0.5)/0.5/torch': '3dfec35347ca170d',
    'ddim/torch.float32/exact/None/0.0/stacked': '3188e2f6cd014625',
    'ddim/torch.float32/exact/None/0.0/torch': '3188e2f6cd014625',
    'ddim/torch.float32/exact/None/0.5/stacked': 'd460c1b5f7b12ba4',
    'ddim/torch.float32/exact/None/0.5/torch': 'dc7e0e5117f568bd',
    'ddim/torch.float32/net/(-0.5, 0.5)/0.0/stacked': '344fd4189564f108',
    'ddim/torch.float32/net/(-0.5, 0.5)/0.0/torch': '344fd4189564f108',
    'ddim/torch.float32/net/(-0.5, 0.5)/0.5/stacked': '52c833ddbcebfcdb',
    'ddim/torch.float32/net/(-0.5, 0.5)/0.5/torch': '04848031e28f1e9a',
    'ddim/torch.float32/net/None/0.0/stacked': 'b86937fb8fe4fcee',
    'ddim/torch.float32/net/None/0.0/torch': 'b86937fb8fe4fcee',
    'ddim/torch.float32/net/None/0.5/stacked': 'f9fe1f45f4c64719',
    'ddim/torch.float32/net/None/0.5/torch': 'cdb7538f87266af1',
    'ddim/torch.float64/exact/(-0.5, 0.5)/0.0/stacked': '1575da5514908f71',
    'ddim/torch.float64/exact/(-0.5, 0.5)/0.0/torch': '1575da5514908f71',
    'ddim/torch.float64/exact/(-0.5, 0.5)/0.5/stacked': '831329dc3e90dc66',
    'ddim/torch.float64/exact/(-0.5, 0.5)/0.5/torch': 'ed1b12a7d2bf0321',
    'ddim/torch.float64/exact/None/0.0/stacked': 'd46f19de7e819430',
    'ddim/torch.float64/exact/None/0.0/torch': 'd46f19de7e819430',
    'ddim/torch.float64/exact/None/0.5/stacked': 'a2222c2aa0652c9f',
    'ddim/torch.float64/exact/None/0.5/torch': '2c0e10440012f597',
    'ddim/torch.float64/net/(-0.5, 0.5)/0.0/stacked': '1575da5514908f71',
    'ddim/torch.float64/net/(-0.5, 0.5)/0.0/torch': '1575da5514908f71',
    'ddim/torch.float64/net/(-0.5, 0.5)/0.5/stacked': '831329dc3e90dc66',
    'ddim/torch.float64/net/(-0.5, 0.5)/0.5/torch': 'ed1b12a7d2bf0321',
    'ddim/torch.float64/net/None/0.0/stacked': 'd46f19de7e819430',
    'ddim/torch.float64/net/None/0.0/torch': 'd46f19de7e819430',
    'ddim/torch.float64/net/None/0.5/stacked': 'a2222c2aa0652c9f',
    'ddim/torch.float64/net/None/0.5/torch': '2c0e10440012f597',
    'ddpm/torch.float32/exact/(-0.5, 0.5)/None/stacked': 'ec6b54db8b3e0243',
    'ddpm/torch.float32/exact/(-0.5, 0.5)/None/torch': '3ddf7c8f04a800eb',
    'ddpm/torch.float32/exact/None/None/stacked': 'd460c1b5f7b12ba4',
    'ddpm/torch.float32/exact/None/None/torch': '224f46d7248b9cd1',
    'ddpm/torch.float32/net/(-0.5, 0.5)/None/stacked': '0f2e493f59b9d6f6',
    'ddpm/torch.float32/net/(-0.5, 0.5)/None/torch': 'fff5722eb649fce8',
    'ddpm/torch.float32/net/None/None/stacked': 'c1a27498bd206607',
    'ddpm/torch.float32/net/None/None/torch': 'f15fa5be9dd066e8',
    'ddpm/torch.float64/exact/(-0.5, 0.5)/None/stacked': '36cd7970d4017f77',
    'ddpm/torch.float64/exact/(-0.5, 0.5)/None/torch': 'd795e36763f015f1',
    'ddpm/torch.float64/exact/None/None/stacked': 'a15cff2937de67ac',
    'ddpm/torch.float64/exact/None/None/torch': 'e1d3d716fd6a4bc9',
    'ddpm/torch.float64/net/(-0.5, 0.5)/None/stacked': '36cd7970d4017f77',
    'ddpm/torch.float64/net/(-0.5, 0.5)/None/torch': 'd795e36763f015f1',
    'ddpm/torch.float64/net/None/None/stacked': 'a15cff2937de67ac',
    'ddpm/torch.float64/net/None/None/torch': 'e1d3d716fd6a4bc9',
    'euler_maruyama/torch.float32/exact/(-0.5, 0.5)/None/stacked': '65f6ea3e909894cf',
    'euler_maruyama/torch.float32/exact/(-0.5, 0.5)/None/torch': '9756f5f804a9cc08',
    'euler_maruyama/torch.float32/exact/None/None/stacked': '5ee3c7b3c6715050',
    'euler_maruyama/torch.float32/exact/None/None/torch': '224f46d7248b9cd1',
    'euler_maruyama/torch.float32/net/(-0.5, 0.5)/None/stacked': 'e820d5f097f1fde7',
    'euler_maruyama/torch.float32/net/(-0.5, 0.5)/None/torch': '1f2ff70c9d5dc8a8',
    'euler_maruyama/torch.float32/net/None/None/stacked': '5c4ecac31ead2a5a',
    'euler_maruyama/torch.float32/net/None/None/torch': '16770102c3aa644a',
    'euler_maruyama/torch.float64/exact/(-0.5, 0.5)/None/stacked': '90195fa4e3888ce5',
    'euler_maruyama/torch.float64/exact/(-0.5, 0.5)/None/torch': 'aab7ecf78345b292',
    'euler_maruyama/torch.float64/exact/None/None/stacked': 'a15cff2937de67ac',
    'euler_maruyama/torch.float64/exact/None/None/torch': 'a3ad7d54ea84415f',
    'euler_maruyama/torch.float64/net/(-0.5, 0.5)/None/stacked': '90195fa4e3888ce5',
    'euler_maruyama/torch.float64/net/(-0.5, 0.5)/None/torch': 'aab7ecf78345b292',
    'euler_maruyama/torch.float64/net/None/None/stacked': 'a15cff2937de67ac',
    'euler_maruyama/torch.float64/net/None/None/torch': 'a3ad7d54ea84415f',
    'heun/torch.float32/exact/(-0.5, 0.5)/None/stacked': 'e2cb5323787f480c',
    'heun/torch.float32/exact/(-0.5, 0.5)/None/torch': 'e2cb5323787f480c',
    'heun/torch.float32/exact/None/None/stacked': '3188e2f6cd014625',
    'heun/torch.float32/exact/None/None/torch': '3188e2f6cd014625',
    'heun/torch.float32/net/(-0.5, 0.5)/None/stacked': '252719cdff38ca5c',
    'heun/torch.float32/net/(-0.5, 0.5)/None/torch': '252719cdff38ca5c',
    'heun/torch.float32/net/None/None/stacked': 'c82f487144495671',
    'heun/torch.float32/net/None/None/torch': 'c82f487144495671',
    'heun/torch.float64/exact/(-0.5, 0.5)/None/stacked': '1575da5514908f71',
    'heun/torch.float64/exact/(-0.5, 0.5)/None/torch': '1575da5514908f71',
    'heun/torch.float64/exact/None/None/stacked': 'd46f19de7e819430',
    'heun/torch.float64/exact/None/None/torch': 'd46f19de7e819430',
    'heun/torch.float64/net/(-0.5, 0.5)/None/stacked': '1575da5514908f71',
    'heun/torch.float64/net/(-0.5, 0.5)/None/torch': '1575da5514908f71',
    'heun/torch.float64/net/None/None/stacked': 'd46f19de7e819430',
    'heun/torch.float64/net/None/None/torch': 'd46f19de7e819430',
    'initial_noise': '7c6d5c0dcc856e61',
    'prior/forward': '6f95fc2df9aad6d2',
    'prior/standard': 'cb44c875d2551ffa',
    'recovery/ddim/torch.float32': 'd4fbb0306fb4e126',
    'recovery/ddim/torch.float64': 'a22dfa23e9c5ab00',
    'recovery/ddpm/torch.float32': 'ddbd3e00f918121c',
    'recovery/ddpm/torch.float64': '550ea9bb779171a7',
    'recovery/euler_maruyama/torch.float32': 'a2099dba47df9a38',
    'recovery/euler_maruyama/torch.float64': 'da934de237faeef3',
    'recovery/heun/torch.float32': 'd4fbb0306fb4e126',
    'recovery/heun/torch.float64': 'a22dfa23e9c5ab00',
}


# ------------------------------------- (e) a sampler option is its SamplerOption + a field
# The recipe: a SamplerOption in the spec (diffusion/samplers.py) and a field of the same
# name on Sampling (diffusion/generate.py). Sampling cannot take a field at run time, so
# the field is added here in subclasses of the classes that inherit it (GenerateConfig,
# the sweep's SampleConfig), put where their readers find them.


def _gained(denoiser, x, sigmas, *, clip=None, generator=None, callback=None, options=None):
    """A dummy sampler with one option: every sample ends at 0.25 · gain."""
    return torch.full_like(x, 0.25 * options["gain"])


GAIN = SamplerOption(1.0, "g", "The dummy's gain in [0, 4]; gained only.", 0.0, 4.0)
GAINED = SamplerSpec("gained", _gained, "Gained", "every sample at 0.25 · gain (a test's)",
                     deterministic=True, scale_invariant=True, options={"gain": GAIN})
GainConfig = dataclasses.make_dataclass("GenerateConfig", [("gain", float, GAIN.default)],
                                        bases=(GenerateConfig,), frozen=True)


@pytest.fixture
def gained(monkeypatch):
    import memgen.cli.models as models

    monkeypatch.setitem(SAMPLERS, "gained", GAINED)
    monkeypatch.setattr(models, "GenerateConfig", GainConfig)
    return GAINED


def _generate(tmp_path, *args):
    train = tmp_path / "train.npz"
    np.savez(train, samples=PATTERNS.numpy())
    return CliRunner().invoke(cli, ["generate", "--exact", str(train), "--n", "4", "--steps",
                                    "5", "--out", str(tmp_path / "gen"), *args])


def test_a_sampler_option_reaches_the_sampler_and_the_record_from_the_cli(gained, tmp_path):
    text = CliRunner().invoke(cli, ["generate", "--help"], terminal_width=200).output
    assert "--gain FLOAT" in text and "The dummy's gain in [0, 4]; gained only." in text
    result = _generate(tmp_path, "--sampler", "gained", "--gain", "2")
    assert result.exit_code == 0, result.output
    assert (np.load(tmp_path / "gen" / "samples.npz")["samples"] == 0.5).all()
    identity = json.loads((tmp_path / "gen" / "samples-00000.json").read_text())["identity"]
    assert identity["gain"] == 2.0 and identity["eta"] is None  # η: recorded as always
    assert list(identity)[4:6] == ["eta", "gain"]  # after steps
    refused = _generate(tmp_path, "--sampler", "gained", "--gain", "5", "--overwrite")
    assert refused.exit_code == 1
    assert "--gain must lie in [0, 4] (Gained's g), got 5.0" in refused.output
    other = _generate(tmp_path, "--sampler", "ddim", "--gain", "2", "--overwrite")
    assert other.exit_code == 1
    assert "--gain is Gained's g; the ddim sampler has none" in other.output


def test_a_sampler_option_reaches_the_sampler_through_generate(gained, tmp_path):
    def draw(gain, name):
        config = GainConfig(n=3, sampler="gained", gain=gain, steps=4, name=name, clip=False)
        path = generate(exact, (3,), VESchedule(), config, tmp_path)
        return np.load(path)["samples"], json.loads((tmp_path / f"{name}.json").read_text())

    default, record = draw(GAIN.default, "a")
    tripled, record3 = draw(3.0, "b")
    assert (default == 0.25).all() and (tripled == 0.75).all()
    assert record["identity"]["gain"] == 1.0 and record3["identity"]["gain"] == 3.0
    assert record3["config"]["gain"] == 3.0
    with pytest.raises(ValueError, match=r"gain must lie in \[0, 4\] for gained, got -1"):
        GainConfig(n=3, sampler="gained", gain=-1.0)
    with pytest.raises(ValueError, match="option 'gain' has no field on GenerateConfig"):
        GenerateConfig(n=3, sampler="gained")  # the recipe's second half missing


def test_a_sampler_option_is_range_checked_in_the_sweep_config(monkeypatch):
    from memgen.experiments.config import SampleConfig, check

    with pytest.raises(ValueError, match=r"sample.eta: 1.5 is out of range; it must lie in "
                                         r"\[0, 1\]"):
        load_config(CONFIGS / "tiny.yaml", ["sample.sampler=ddim", "sample.eta=1.5"])
    config = load_config(CONFIGS / "tiny.yaml")
    monkeypatch.setitem(SAMPLERS, "gained", GAINED)
    GainSample = dataclasses.make_dataclass("SampleConfig", [("gain", float, GAIN.default)],
                                            bases=(SampleConfig,), frozen=True)
    fields = {f.name: getattr(config.sample, f.name) for f in dataclasses.fields(SampleConfig)}

    def with_gain(gain):
        sample = GainSample(**{**fields, "sampler": "gained"}, gain=gain)
        return dataclasses.replace(config, sample=sample)

    check(with_gain(4.0))  # the interval is closed
    with pytest.raises(ValueError, match=r"sample.gain: 4.5 is out of range; it must lie in "
                                         r"\[0, 4\]"):
        check(with_gain(4.5))
