"""Samplers against known answers: a Gaussian data law (exact denoiser, exact moments), the
empirical denoiser (must return training points), the textbook VP updates, batch independence."""

import math

import numpy as np
import pytest
import torch

from memgen.diffusion.denoisers import (EmpiricalDenoiser, EpsDenoiser, GaussianDenoiser,
                                         ScoreDenoiser)
from memgen.diffusion.ladders import ve_sigmas
from memgen.diffusion.priors import GaussianPrior, initial_noise
from memgen.diffusion.rng import StackedGenerator, draws_group
from memgen.diffusion.sampler_steps import clipped
from memgen.diffusion.samplers import (SAMPLERS, get_sampler, sample_ddim, sample_ddpm,
                                       sample_euler_maruyama, sample_heun, sampler_options)
from memgen.diffusion.schedules import VESchedule, VPSchedule

F64 = torch.float64
VP = VPSchedule()
MU = torch.tensor([0.5, -1.0], dtype=F64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _gain(s):
    return COV @ torch.linalg.inv(COV + s * s * torch.eye(2, dtype=F64))


def _propagated_cov(name, sigmas, eta=0.0):
    """Exact output covariance of each sampler for the Gaussian law, by propagating
    C ← M C Mᵀ + c² I through its affine steps x' − μ = M(x − μ) + c z (textbook forms)."""
    levels = [float(v) for v in sigmas]
    eye = torch.eye(2, dtype=F64)
    cov = COV + levels[0] ** 2 * eye
    for s, t in zip(levels, levels[1:]):
        k = _gain(s)
        if name in ("ddpm", "ddim"):
            c = t * math.sqrt(1 - (t / s) ** 2) * (1.0 if name == "ddpm" else eta)
            m, var = k + math.sqrt(t * t - c * c) / s * (eye - k), c * c
        elif name == "euler_maruyama":
            m, var = eye + (s * s - t * t) / (s * s) * (k - eye), (s * s - t * t) * (t > 0)
        else:  # heun
            d = (eye - k) / s
            m = eye + (t - s) * d
            if t > 0:
                m = eye + (t - s) * (d + (eye - _gain(t)) @ m / t) / 2
            var = 0.0
        cov = m @ cov @ m.T + var * eye
    return cov


# name, sampler, kwargs, ladder, target covariance, allowance for the discretisation bias.
# Allowances are ~1.5× the exact bias max|C_out − C_target| from _propagated_cov (checked
# in test_discretisation_bias_is_within_allowance): DDPM (1000 steps) 0.0087 — the plug-in
# posterior mean ignores Cov(y | x) at each step, O(1/steps); DDIM η=0 (100 steps) 0.036 and
# η=1 (100 steps, = DDPM on that ladder) 0.077, first order in the step; Euler–Maruyama on the
# toy VE ladder (1000 steps, Δt = 1e-3) 4e-4, O(Δt), stopping at σ(t_min) so the target is
# Σ + t_min I; Heun (100 VP steps) 8e-4, second order.
CASES = [
    ("ddpm", sample_ddpm, {}, VP.sigmas(), COV, 0.013),
    ("ddim_eta0", sample_ddim, {"options": {"eta": 0.0}}, VP.sigmas(100), COV, 0.055),
    ("ddim_eta1", sample_ddim, {"options": {"eta": 1.0}}, VP.sigmas(100), COV, 0.115),
    ("euler_maruyama", sample_euler_maruyama, {}, VESchedule().sigmas(1000),
     COV + 1e-3 * torch.eye(2, dtype=F64), 0.0006),
    ("heun", sample_heun, {}, VP.sigmas(100), COV, 0.0015),
]
N_GAUSS = 20_000


def _moments_tolerance(cov, n, allowance=0.0):
    """4 standard errors of the sample mean and covariance of N(·, cov) plus an allowance:
    Var(mean_i) = C_ii/n, Var(Ĉ_ij) ≈ (C_ii C_jj + C_ij²)/n."""
    var = torch.diagonal(cov)
    se_mean = (var / n).sqrt()
    se_cov = ((var[:, None] * var[None, :] + cov.square()) / n).sqrt()
    return 4 * se_mean, 4 * se_cov + allowance


@pytest.mark.parametrize("label, sampler, kwargs, sigmas, target, allowance", CASES,
                         ids=[c[0] for c in CASES])
def test_gaussian_moments_are_reproduced(label, sampler, kwargs, sigmas, target, allowance):
    g = torch.Generator().manual_seed(1234)
    start_cov = COV + float(sigmas[0]) ** 2 * torch.eye(2, dtype=F64)  # exact marginal at σ_max
    x = MU + torch.randn(N_GAUSS, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(start_cov).T
    out = sampler(GaussianDenoiser(MU, COV), x, sigmas, generator=g, **kwargs)
    mean, cov = out.mean(0), torch.cov(out.T)
    tol_mean, tol_cov = _moments_tolerance(target, N_GAUSS, allowance)
    assert ((mean - MU).abs() <= tol_mean).all(), (mean, tol_mean)
    assert ((cov - target).abs() <= tol_cov).all(), (cov, target, tol_cov)
    # tighter: against the exact covariance this discretisation produces (no allowance)
    name = label.split("_eta")[0]
    exact = _propagated_cov(name, sigmas, kwargs.get("options", {}).get("eta", 0.0))
    assert ((cov - exact).abs() <= _moments_tolerance(exact, N_GAUSS)[1]).all(), (cov, exact)


@pytest.mark.parametrize("label, sampler, kwargs, sigmas, target, allowance", CASES,
                         ids=[c[0] for c in CASES])
def test_discretisation_bias_is_within_allowance(label, sampler, kwargs, sigmas, target,
                                                 allowance):
    exact = _propagated_cov(label.split("_eta")[0], sigmas,
                            kwargs.get("options", {}).get("eta", 0.0))
    bias = (exact - target).abs().max().item()
    assert allowance / 2 < bias < allowance / 1.2  # allowance ≈ 1.5 × bias, not slack


# ------------------------------------------------------------------- positive control

def _points(kind):
    if kind == "circle8":
        angle = torch.arange(8, dtype=F64) * 2 * math.pi / 8
        return torch.stack([angle.cos(), angle.sin()], 1)
    return torch.randn(5, 10, generator=torch.Generator().manual_seed(3), dtype=F64)


@pytest.mark.parametrize("kind", ["circle8", "normal5x10"])
@pytest.mark.parametrize("name, kwargs, steps", [
    ("ddpm", {}, None), ("ddim", {"options": {"eta": 0.0}}, 100), ("heun", {}, 100)])
def test_empirical_denoiser_reproduces_training_points(kind, name, kwargs, steps):
    patterns = _points(kind)
    g = torch.Generator().manual_seed(5)
    sigmas = VP.sigmas(steps)
    x = initial_noise((400, patterns.shape[1]), 1 / VP.scale(999), g, dtype=F64)
    out = get_sampler(name)(EmpiricalDenoiser(patterns), x, sigmas, generator=g, **kwargs)
    nearest = torch.cdist(out, patterns).min(1).values
    assert (nearest < 1e-3).double().mean() >= 0.99
    hits = torch.cdist(out, patterns).argmin(1).bincount(minlength=len(patterns))
    assert (hits > 0).sum() >= len(patterns) - 1  # not collapsed onto one point


# ----------------------------------------------------------------- batch independence

@pytest.mark.parametrize("name, sigmas", [
    ("ddpm", VP.sigmas(100)), ("euler_maruyama", VESchedule(sigma_max=5.0).sigmas(100))])
def test_stacked_generator_makes_samples_independent_of_the_batch(name, sigmas):
    denoiser = EmpiricalDenoiser(_points("normal5x10"))
    sampler = get_sampler(name)

    def run(seeds):
        gen = StackedGenerator(seeds)
        x = initial_noise((len(seeds), 10), float(sigmas[0]), gen, dtype=F64)
        return sampler(denoiser, x, sigmas, generator=gen)

    together = run(range(8))
    halves = torch.cat([run(range(4)), run(range(4, 8))])
    singles = torch.cat([run([k]) for k in range(8)])
    torch.testing.assert_close(halves, together, rtol=0, atol=1e-12)
    torch.testing.assert_close(singles, together, rtol=0, atol=1e-12)
    assert torch.unique(together, dim=0).shape[0] > 1  # seeds really differ


def test_stacked_generator_draws_are_per_seed():
    a = StackedGenerator([3, 4]).randn((2, 5), dtype=F64)
    b = np.random.Generator(np.random.PCG64(np.random.SeedSequence(4))).standard_normal(5)
    assert torch.equal(a[1], torch.from_numpy(b))
    # Seeds are kept whole: no 32-bit truncation (torch's CPU generator would alias these).
    wide = StackedGenerator([5, 5 + 2**32, (0, 5), (1, 5)]).randn((4, 3), dtype=F64)
    assert len({tuple(row.tolist()) for row in wide}) == 4
    assert StackedGenerator([1]).randn_like(torch.zeros(1, 2, 3)).shape == (1, 2, 3)
    with pytest.raises(ValueError):
        StackedGenerator([1, 2]).randn((3, 5))
    with pytest.raises(ValueError):
        StackedGenerator([])


# ---------------------------------------------------------------- textbook equivalences

def _vp_trajectory(denoiser, x_vp, ts, update):
    """Run a VP-coordinate update over timesteps ts (decreasing), t_next = −1 for the end."""
    ab = VP.alphas_cumprod.tolist()
    out = []
    for t, t_next in zip(ts, ts[1:] + [-1]):
        a, a_next = ab[t], (ab[t_next] if t_next >= 0 else 1.0)
        x0 = denoiser(x_vp / math.sqrt(a), math.sqrt((1 - a) / a))
        eps = (x_vp - math.sqrt(a) * x0) / math.sqrt(1 - a)  # ε̂ of the same denoiser
        x_vp = update(x_vp, x0, eps, a, a_next, t_next)
        out.append(x_vp / math.sqrt(a_next))  # in VE coordinates, for comparison
    return out


def test_ddpm_equals_the_textbook_vp_ancestral_step():
    """x_{t−1} = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t + √β̃_t z (Ho et al. 2020, Alg. 2)."""
    denoiser = EmpiricalDenoiser(_points("normal5x10"))
    betas = VP.betas.tolist()
    x_vp = torch.randn(64, 10, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = torch.Generator().manual_seed(11)

    def ho_step(x, x0, eps, a, a_next, t_next):
        t = t_next + 1
        beta = betas[t]
        mean = (x - beta / math.sqrt(1 - a) * eps) / math.sqrt(1 - beta)
        if t_next < 0:
            return mean
        beta_tilde = (1 - a_next) / (1 - a) * beta
        return mean + math.sqrt(beta_tilde) * torch.randn(x.shape, generator=g, dtype=F64)

    want = _vp_trajectory(denoiser, x_vp, list(range(999, -1, -1)), ho_step)
    got = []
    sample_ddpm(denoiser, x_vp / VP.scale(999), VP.sigmas(),
                generator=torch.Generator().manual_seed(11),
                callback=lambda info: got.append(info["x"]))
    assert len(got) == len(want) == 1000
    for w, x in zip(want, got):
        torch.testing.assert_close(x, w, rtol=1e-9, atol=1e-9)


def test_ddim_eta0_equals_the_textbook_update_on_a_strided_ladder():
    """x_{t'} = √ᾱ_{t'} x̂0 + √(1 − ᾱ_{t'}) ε̂ (Song et al. 2021, eq. 12 with σ_t = 0)."""
    denoiser = EmpiricalDenoiser(_points("normal5x10"))
    x_vp = torch.randn(64, 10, generator=torch.Generator().manual_seed(1), dtype=F64)
    ts = VP.timesteps(50).tolist()

    def ddim_step(x, x0, eps, a, a_next, t_next):
        return math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps

    want = _vp_trajectory(denoiser, x_vp, ts, ddim_step)
    got = []
    sample_ddim(denoiser, x_vp / VP.scale(999), VP.sigmas(50),
                callback=lambda info: got.append(info["x"]))
    for w, x in zip(want, got):
        torch.testing.assert_close(x, w, rtol=1e-9, atol=1e-9)


def test_ddim_eta1_equals_ddpm():
    denoiser = GaussianDenoiser(MU, COV)
    x = initial_noise((256, 2), 30.0, torch.Generator().manual_seed(2), dtype=F64)
    sig = VP.sigmas(50)
    a = sample_ddim(denoiser, x, sig, options={"eta": 1.0},
                    generator=torch.Generator().manual_seed(9))
    b = sample_ddpm(denoiser, x, sig, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_euler_maruyama_keeps_its_noise_stream():
    """Regression: one torch.randn(x.shape, generator) per step, as before the registry (the
    step's arithmetic rounds differently since revision 2: equal to float64 rounding)."""
    denoiser = GaussianDenoiser(MU, COV)
    sig = ve_sigmas(3.0, 0.05, 20)
    x = initial_noise((32, 2), 3.0, torch.Generator().manual_seed(4), dtype=F64)
    g = torch.Generator().manual_seed(8)
    want = x
    for s, t in zip(sig.tolist(), sig.tolist()[1:]):  # the loop as it read before
        score = (denoiser(want, s) - want) / s**2
        var = s**2 - t**2
        z = torch.randn(want.shape, generator=g, dtype=F64)
        want = want + var * score + math.sqrt(var) * z * (t > 0)
    got = sample_euler_maruyama(denoiser, x, sig, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def _textbook(name, denoiser, x, levels, generator, clip, eta):
    """The samplers' loops as they read before their constants moved out of the loop:
    Python numbers, one denoiser call and one draw at a time."""
    den = clipped(denoiser, clip)

    def draw(x):
        if isinstance(generator, StackedGenerator):
            return generator.randn_like(x)
        return torch.randn(x.shape, generator=generator, dtype=x.dtype)

    for s, t in zip(levels, levels[1:]):
        x0 = den(x, s)
        if name == "euler_maruyama":
            var = s**2 - t**2
            x = x + var * ((x0 - x) / s**2) + math.sqrt(var) * draw(x) * (t > 0)
        elif name == "heun":
            d = (x - x0) / s
            x_next = x + (t - s) * d
            if t > 0:
                x_next = x + (t - s) * (d + (x_next - den(x_next, t)) / t) / 2
            x = x_next
        elif name == "ddpm":
            r = (t / s) ** 2
            x = x0 + r * (x - x0) + t * math.sqrt(1 - r) * draw(x) if t > 0 else x0
        else:
            c = eta * t * math.sqrt(1 - (t / s) ** 2)
            x = x0 + math.sqrt(max(t**2 - c**2, 0.0)) * ((x - x0) / s)
            x = x + c * draw(x) if c > 0 else x
    return x


def _textbook_cases():
    """(denoiser, ladder, dtype): the network denoisers in float32 (their levels made at once)
    and a generic one (no ``at_levels``) in float64."""
    w = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    net = lambda x, t: torch.tanh(x @ w.to(x) + t.view(-1, 1).to(x) / 1000)  # noqa: E731
    ve = torch.cat([VESchedule().sigmas(40), torch.zeros(1, dtype=F64)])
    return [(ScoreDenoiser(net, VESchedule()), ve, torch.float32),
            (EpsDenoiser(net, VP), VP.sigmas(30), torch.float32),
            (GaussianDenoiser(MU, COV), VESchedule().sigmas(40), F64)]


@pytest.mark.parametrize("batch", [5, 8])  # 10 numbers a step (drawn a step at a time), 16
@pytest.mark.parametrize("name", [name for name in SAMPLERS if name != "euler_maruyama"])
def test_samplers_give_their_textbook_loops_numbers_to_the_bit(name, batch):
    """Network denoisers in float32 (their levels made at once, ``at_levels``) and the
    generic path, both generators, with and without clipping: the textbook loop's numbers.
    At 16 numbers a step, a torch.Generator's noise is drawn in blocks of steps."""
    for denoiser, sigmas, dtype in _textbook_cases():
        x = 3 * torch.randn(batch, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)
        for clip, eta in ((None, 0.0), ((-1.0, 1.0), 0.5), (None, 1.0)):
            for stacked in (False, True):
                gens = [StackedGenerator(range(batch)) if stacked else
                        torch.Generator().manual_seed(2) for _ in range(2)]
                got = get_sampler(name)(denoiser, x, sigmas, clip=clip, generator=gens[0],
                                     options={"eta": eta} if name == "ddim" else None)
                want = _textbook(name, denoiser, x, sigmas.tolist(), gens[1], clip, eta)
                assert torch.equal(got, want), (type(denoiser).__name__, clip, eta, stacked)
                nxt = [g.randn((batch, 1), dtype=F64) if stacked else torch.rand(1, generator=g)
                       for g in gens]
                assert torch.equal(*nxt)  # the generator is left where the loop leaves it


@pytest.mark.parametrize("batch", [5, 8])
def test_euler_maruyama_is_its_textbook_loop_up_to_rounding(batch):
    """The residual step x + (var c/σ²)·f + √var z against the textbook's
    x + var·((D − x)/σ²) + √var z: equal up to the roundings of x's dtype, with the same
    noise (the generator left where the textbook leaves it), for both generators, with and
    without clipping; a callback sees each x and D(x, σ) to the bit and changes nothing."""
    for denoiser, sigmas, dtype in _textbook_cases():
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        x = 3 * torch.randn(batch, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)
        for clip in (None, (-1.0, 1.0)):
            for stacked in (False, True):
                gens = [StackedGenerator(range(batch)) if stacked else
                        torch.Generator().manual_seed(2) for _ in range(3)]
                seen = []
                got = sample_euler_maruyama(denoiser, x, sigmas, clip=clip, generator=gens[0],
                                            callback=seen.append)
                want = _textbook("euler_maruyama", denoiser, x, sigmas.tolist(), gens[1], clip, 0)
                torch.testing.assert_close(got, want, rtol=tol, atol=tol)
                assert torch.equal(got, sample_euler_maruyama(denoiser, x, sigmas, clip=clip,
                                                              generator=gens[2]))
                nxt = [g.randn((batch, 1), dtype=F64) if stacked else torch.rand(1, generator=g)
                       for g in gens]
                assert torch.equal(nxt[0], nxt[1]) and torch.equal(nxt[0], nxt[2])
                den = clipped(denoiser, clip)
                starts = [x] + [info["x"] for info in seen[:-1]]
                for start, info in zip(starts, seen):
                    assert torch.equal(info["denoised"], den(start, info["sigma"]))
                assert torch.equal(seen[-1]["x"], got)


def test_euler_maruyama_moves_to_a_wider_denoisers_dtype_with_a_callback_or_not():
    """A denoiser answering in float64 for float32 x: the arithmetic moves to float64, as
    x + (D − x) would, whether a callback watches (each x kept) or not (x stepped in place)."""
    gauss = GaussianDenoiser(MU, COV)
    wide = lambda x, s: gauss(x.double(), s)  # noqa: E731
    x = 3 * torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    sig = ve_sigmas(3.0, 0.05, 10)
    runs = [sample_euler_maruyama(wide, x, sig, generator=torch.Generator().manual_seed(1),
                                  callback=cb) for cb in (None, lambda info: None)]
    assert runs[0].dtype == runs[1].dtype == F64 and torch.equal(*runs)
    assert x.dtype == torch.float32


def test_euler_maruyama_steps_on_the_networks_residual():
    """A network denoiser's step never forms D(x, σ) (``residuals_at_levels``); a clipped
    one does, as clipping acts on D."""
    denoiser, sigmas, _ = _textbook_cases()[0]
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))

    def forbidden(*args):
        raise AssertionError("D formed")

    denoiser.at_levels = forbidden
    sample_euler_maruyama(denoiser, x, sigmas, generator=torch.Generator().manual_seed(2))
    with pytest.raises(AssertionError, match="D formed"):
        sample_euler_maruyama(denoiser, x, sigmas, clip=(-1.0, 1.0))


# ------------------------------------------------------------------ interface checks

def test_registry_and_errors():
    assert set(SAMPLERS) == {"ddpm", "ddim", "euler_maruyama", "heun"}
    assert get_sampler("heun") is sample_heun
    with pytest.raises(ValueError, match="ddpm, ddim"):
        get_sampler("dpm++")
    x = torch.zeros(3, 2, dtype=F64)
    d = GaussianDenoiser(MU, COV)
    for sampler in map(get_sampler, SAMPLERS):
        for bad in ([1.0, 2.0], [1.0, 0.0, 0.0], [1.0, -0.5], []):
            with pytest.raises(ValueError):
                sampler(d, x, bad)
    with pytest.raises(ValueError):
        sample_ddim(d, x, [1.0, 0.5], options={"eta": 1.5})
    for sampler in map(get_sampler, SAMPLERS):  # an option the sampler does not read
        with pytest.raises(ValueError, match="no option 'etta'"):
            sampler(d, x, [1.0, 0.5], options={"etta": 0.5})
    with pytest.raises(ValueError):
        sample_ddpm(d, x, [1.0, 0.5], generator=0)
    with pytest.raises(ValueError):
        initial_noise((2, 2), 0.0)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_dtype_and_last_step_to_zero(name):
    d = GaussianDenoiser(MU, COV)
    x = initial_noise((16, 2), 5.0, torch.Generator().manual_seed(0), dtype=F64)
    seen = []
    out = get_sampler(name)(d, x, [5.0, 1.0, 0.3, 0.0], generator=torch.Generator().manual_seed(1),
                         callback=lambda info: seen.append((info["i"], info["sigma_next"])))
    assert seen == [(0, 1.0), (1, 0.3), (2, 0.0)] and out.dtype == F64 and out.shape == x.shape
    if name != "heun":  # a stochastic or one-step-to-0 sampler ends on the denoiser's output
        assert torch.unique(out, dim=0).shape[0] == 16


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)])
def test_callback_sees_the_step_and_the_denoised_estimate(name, clip):
    """info = {x, i, sigma, sigma_next, denoised}: x the new state, denoised = D(x, σ_i) at
    the state the step started from (clamped when the sampler clips), as k-diffusion."""
    d = GaussianDenoiser(MU * 3, COV)  # x̂₀ outside [−1, 1], so a clip shows
    x = initial_noise((8, 2), 5.0, torch.Generator().manual_seed(0), dtype=F64)
    levels = [5.0, 1.0, 0.3, 0.0]
    seen = []
    out = get_sampler(name)(d, x, levels, clip=clip, generator=torch.Generator().manual_seed(1),
                         callback=lambda info: seen.append(dict(info)))
    assert [set(info) for info in seen] == [{"x", "i", "sigma", "sigma_next", "denoised"}] * 3
    assert [(info["i"], info["sigma"], info["sigma_next"]) for info in seen] == [
        (0, 5.0, 1.0), (1, 1.0, 0.3), (2, 0.3, 0.0)]
    before = [x] + [info["x"] for info in seen[:-1]]
    for start, info in zip(before, seen):
        want = d(start, info["sigma"])
        want = want if clip is None else want.clamp(*clip)
        torch.testing.assert_close(info["denoised"], want, rtol=0, atol=0)
    torch.testing.assert_close(seen[-1]["x"], out, rtol=0, atol=0)


def test_sampler_options_pick_what_each_sampler_reads():
    assert sampler_options("ddim", {"eta": 0.3}) == {"eta": 0.3}
    assert sampler_options("ddpm", {"eta": 0.3}) == {} == sampler_options("heun", {"eta": 1})
    assert all(spec.name == name for name, spec in SAMPLERS.items())
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_options("dpm++", {})
    d, x = GaussianDenoiser(MU, COV), torch.zeros(4, 2, dtype=F64)
    default = sample_ddim(d, x, [2.0, 0.5, 0.0])
    torch.testing.assert_close(sample_ddim(d, x, [2.0, 0.5, 0.0], options={"eta": 0.0}),
                               default, rtol=0, atol=0)


def test_stacked_generator_values_do_not_depend_on_how_draws_are_grouped():
    """Drawing ahead in blocks gives the stream's values in order, whatever the shapes."""
    g = StackedGenerator([7])
    pieces = [g.randn((1, 3), dtype=F64), g.randn((1, 5000), dtype=F64), g.randn((1, 2), dtype=F64)]
    stream = np.random.Generator(np.random.PCG64(np.random.SeedSequence(7))).standard_normal(5005)
    torch.testing.assert_close(torch.cat([p[0] for p in pieces]), torch.from_numpy(stream),
                               rtol=0, atol=0)


# ------------------------------------------------------------ clipping and the start


def test_gaussian_denoiser_per_sample_sigma_matches_scalar():
    d = GaussianDenoiser(MU, COV)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    sig = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    rows = torch.cat([d(x[i:i + 1], float(sig[i])) for i in range(3)])
    torch.testing.assert_close(d(x, sig), rows, rtol=0, atol=1e-14)
    torch.testing.assert_close(d(x, 1e-9), x, rtol=0, atol=1e-8)  # no noise: x itself


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_clip_clamps_every_denoised_estimate(name):
    """clip=(lo, hi) is the sampler run on D clamped to [lo, hi]; clip=None changes nothing."""
    d = GaussianDenoiser(MU * 3, COV)  # x̂₀ near (1.5, −3): outside [−1, 1]
    x = initial_noise((64, 2), 5.0, torch.Generator().manual_seed(0), dtype=F64)
    run = lambda den, **kw: get_sampler(name)(den, x, [5.0, 1.0, 0.3, 0.0],  # noqa: E731
                                           generator=torch.Generator().manual_seed(1), **kw)
    by_hand = run(lambda y, s: d(y, s).clamp(-1, 1))
    torch.testing.assert_close(run(d, clip=(-1, 1)), by_hand, rtol=0, atol=0)
    torch.testing.assert_close(run(clipped(d, (-1, 1))), by_hand, rtol=0, atol=0)
    torch.testing.assert_close(run(d, clip=None), run(d), rtol=0, atol=0)
    assert not torch.equal(by_hand, run(d))
    assert clipped(d, None) is d
    for bad in ((1.0, -1.0), (0.0,), (0.0, 0.0)):
        with pytest.raises(ValueError, match="clip"):
            run(d, clip=bad)


def test_standard_prior_draws_what_generation_always_drew():
    """GaussianPrior(std) without mean and factor: std · (default-dtype normals), cast."""
    seeds = [(0, i) for i in range(3)]
    want = 2.5 * StackedGenerator(seeds).randn((3, 4)).to(dtype=F64)
    got = GaussianPrior(2.5).sample((3, 4), StackedGenerator(seeds), dtype=F64)
    assert torch.equal(got, want)
    with pytest.raises(ValueError):
        GaussianPrior(0.0)


def test_gaussian_prior_draws_z_then_w_from_each_stream():
    mean, factor = torch.tensor([1.0, -1.0, 0.5], dtype=F64), torch.eye(3, dtype=F64)[:2]
    got = GaussianPrior(2.0, mean, factor).sample((2, 3), StackedGenerator([4, 5]), dtype=F64)
    for row, seed in zip(got, (4, 5)):
        z = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed))).standard_normal(5)
        want = mean + 2.0 * torch.from_numpy(z[:3]) + torch.from_numpy(z[3:]) @ factor
        torch.testing.assert_close(row, want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_torch_cpu_normals_of_16_at_a_time_do_not_depend_on_grouping(dtype):
    """What the block draws of a torch.Generator rest on (``draws_group``): k draws of
    n = 16·m numbers from torch's CPU generator are one draw of k·n numbers; for n = 10 they
    are not, so such noise is drawn a step at a time."""
    def draws(n, together):
        g = torch.Generator().manual_seed(3)
        if together:
            return torch.randn((37, n), generator=g, dtype=dtype)
        return torch.stack([torch.randn(n, generator=g, dtype=dtype) for _ in range(37)])

    for n in (16, 128, 784):
        assert torch.equal(draws(n, True), draws(n, False))
    assert not torch.equal(draws(10, True), draws(10, False))
    assert draws_group(torch.zeros(8, 2, dtype=dtype), torch.Generator())
    assert draws_group(torch.zeros(8, 2, dtype=dtype), None)
    assert not draws_group(torch.zeros(5, 2, dtype=dtype), torch.Generator())
    assert not draws_group(torch.zeros(8, 2, dtype=torch.bfloat16), torch.Generator())


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_return_ordinary_tensors(name):
    """Samplers run under torch.inference_mode; what they return is an ordinary tensor, for
    autograd and in-place use, equal to what they compute under no_grad."""
    d = GaussianDenoiser(MU, COV)
    x = initial_noise((16, 2), 5.0, torch.Generator().manual_seed(0), dtype=F64)
    sig = [5.0, 1.0, 0.3, 0.0]
    out = get_sampler(name)(d, x, sig, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = get_sampler(name).__wrapped__(d, x, sig, generator=torch.Generator().manual_seed(1))
    assert not out.is_inference() and torch.equal(out, plain)
    out.add_(1.0).requires_grad_()
    (out.square().sum()).backward()
    torch.testing.assert_close(out.grad, 2 * out.detach())
