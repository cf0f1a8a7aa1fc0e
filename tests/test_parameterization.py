"""Parameterizations against hand-written formulas and known answers: the loss of each
family, its denoiser, and the tie between them (the network that zeroes the loss on one
point is the one whose denoiser returns that point)."""

import pytest
import torch

from memgen.diffusion.denoisers import EpsDenoiser, ScoreDenoiser
from memgen.diffusion.parameterization import (EpsPrediction, RowReader, ScorePrediction,
                                               get_parameterization, network_time)
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.training import TrainConfig, draw_batch, training_loss

VP, VE = VPSchedule(), VESchedule(sigma_max=2.0)
Y = torch.tensor([[0.25, -0.5, 0.75]])  # one training point, (1, 3)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _net(seed=0):
    """A small fixed network F(x, t) of (B, 3) and (B,)."""
    g = torch.Generator().manual_seed(seed)
    w, v = torch.randn(3, 3, generator=g), torch.randn(3, generator=g)
    return lambda x, t: torch.tanh(x @ w + t.view(-1, 1) * v / 100)


def _batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)


def test_eps_loss_is_ddpm_loss():
    """‖ε_θ(√ᾱ_t x₀ + √(1 − ᾱ_t) n, t) − n‖², averaged over every coordinate."""
    x0, noise = _batch()
    t = torch.randint(VP.T, (16,), generator=torch.Generator().manual_seed(2))
    net = _net()
    ab = VP.alphas_cumprod[t].float()[:, None]
    want = ((net(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t) - noise) ** 2).mean()
    got = EpsPrediction(VP).loss(net, x0, t, noise)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    config = TrainConfig(preset="toy-mlp", objective="vp_eps")
    torch.testing.assert_close(training_loss(net, x0, t, noise, config, VP), want, rtol=0, atol=0)


def test_score_loss_is_sigma_weighted_score_matching():
    """‖σ s_θ + n‖² with s_θ = F/σ, σ = σ_max √t: ‖F(x₀ + σ n, t) + n‖²."""
    x0, noise = _batch()
    t = 0.001 + 0.999 * torch.rand(16, generator=torch.Generator().manual_seed(3))
    net = _net()
    sigma = (2.0 * t.sqrt())[:, None]
    want = ((net(x0 + sigma * noise, t) + noise) ** 2).mean()
    torch.testing.assert_close(ScorePrediction(VE).loss(net, x0, t, noise), want, rtol=0, atol=0)
    # the score-matching form: F/σ against the conditional score −n/σ, weighted by σ²
    score, target = net(x0 + sigma * noise, t) / sigma, -noise / sigma
    torch.testing.assert_close((sigma**2 * (score - target) ** 2).mean(), want,
                               rtol=1e-6, atol=0)


def test_the_loss_minimiser_on_one_point_denoises_to_it():
    """On one training point y the networks ε*(x_t, t) = (x_t − √ᾱ_t y)/√(1 − ᾱ_t) (VP) and
    F*(x, t) = −(x − y)/σ(t) (VE) have loss 0, and their denoisers return y."""
    y = Y.double()
    x0 = y.expand(32, 3)
    _, noise = _batch(32)
    noise = noise.double()

    def eps_star(x_t, t):
        ab = VP.alphas_cumprod[t.round().long()][:, None]
        return (x_t - ab.sqrt() * y) / (1 - ab).sqrt()

    def f_star(x, t):
        return -(x - y) / (2.0 * t.sqrt())[:, None]

    t_vp = torch.randint(VP.T, (32,), generator=torch.Generator().manual_seed(4))
    t_ve = 0.001 + 0.999 * torch.rand(32, generator=torch.Generator().manual_seed(5),
                                      dtype=torch.float64)
    assert EpsPrediction(VP).loss(eps_star, x0, t_vp, noise) < 1e-20
    assert ScorePrediction(VE).loss(f_star, x0, t_ve, noise) < 1e-20
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for sigma in (float(VP.sigma(10)), float(VP.sigma(500)), float(VP.sigma(999))):
        torch.testing.assert_close(EpsPrediction(VP).denoise(eps_star, x * sigma, sigma),
                                   y.expand(5, 3), rtol=1e-9, atol=1e-9 * sigma)
    for sigma in (0.05, 1.0, 2.0):
        torch.testing.assert_close(ScorePrediction(VE).denoise(f_star, x * sigma, sigma),
                                   y.expand(5, 3), rtol=1e-12, atol=1e-12)


def test_denoise_is_the_wrappers_formula():
    """x − σ ε̂(x/√(1 + σ²), t(σ)) (VP) and x + σ F(x, t(σ)) (VE), σ rounded to x's dtype."""
    x, _ = _batch(6)
    net = _net()
    sigma = torch.tensor([0.5, 1.0, 3.0, 10.0, 80.0, 150.0])
    t = VP.t_from_sigma(sigma.double()).float()
    want = x - sigma[:, None] * net(x / (1 + sigma[:, None] ** 2).sqrt(), t)
    torch.testing.assert_close(EpsPrediction(VP).denoise(net, x, sigma), want,
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(EpsDenoiser(net, VP)(x, sigma), want, rtol=1e-6, atol=1e-6)
    assert EpsDenoiser(net, VP, clip=True)(x * 100, sigma).abs().max() <= 1.0
    ve_sigma = sigma / 100
    want = x + ve_sigma[:, None] * net(x, (ve_sigma.double() / 2.0).square().float())
    torch.testing.assert_close(ScorePrediction(VE).denoise(net, x, ve_sigma), want,
                               rtol=0, atol=0)
    torch.testing.assert_close(ScoreDenoiser(net, VE)(x, ve_sigma), want, rtol=0, atol=0)


def test_network_time_of_a_number_and_of_a_tensor_agree():
    x = torch.zeros(4, 3)
    for schedule in (VP, VE):
        level = float(schedule.sigmas(10)[3])
        s1, t1 = network_time(schedule, level, x)
        s2, t2 = network_time(schedule, torch.full((4,), level), x)
        assert torch.equal(s1, s2) and torch.equal(t1, t2)
        assert s1.dtype == t1.dtype == torch.float32 and s1.shape == t1.shape == (4,)
    # on the ladder t is the integer index, exactly
    assert torch.equal(network_time(VP, float(VP.sigma(500)), x)[1], torch.full((4,), 500.0))
    for bad in (1e-4, 1e4):
        with pytest.raises(ValueError, match="sigma must lie in"):
            network_time(VP, bad, x)
        with pytest.raises(ValueError, match="sigma must lie in"):
            network_time(VP, torch.full((4,), bad), x)
    with pytest.raises(ValueError, match="sigma must lie in"):
        network_time(VE, 2.5, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_at_levels_gives_the_denoisers_numbers(dtype):
    """A ladder's per-level denoisers, their σ and t(σ) computed for all levels at once, give
    D(x, σ) of the one-level call to the bit, whatever the batch (vectorised or not)."""
    f = _net()
    net = lambda x, t: f(x.float(), t.float()).to(x.dtype) + 1e-3 * x * t.view(-1, 1)  # noqa: E731
    ladders = [(EpsDenoiser(net, VP), VP.sigmas(s)[:-1]) for s in (None, 100, 7)] + [
        (EpsDenoiser(net, VP, clip=True), VP.sigmas(20)[:-1]),
        (ScoreDenoiser(net, VE), VE.sigmas(1000)), (ScoreDenoiser(net, VE), VE.sigmas(30))]
    for batch in (1, 3, 64):
        x = 3 * torch.randn(batch, 3, generator=torch.Generator().manual_seed(batch),
                            dtype=dtype)
        for denoiser, sigmas in ladders:
            levels = sigmas.tolist()
            for level, step in zip(levels, denoiser.at_levels(levels, x)):
                assert torch.equal(step(x), denoiser(x, level)), (batch, level)
    with pytest.raises(ValueError, match="sigma must lie in"):
        EpsDenoiser(net, VP).at_levels([10.0, 1e-4], x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_residuals_give_the_denoisers_numbers(dtype):
    """D(x, σ_i) − x = c_i f(x, i) from ``residuals_at_levels``: (f(x, i) * c_i) + x is the
    one-level D(x, σ_i) to the bit, for both network families and any batch, and f · c is
    σ F (resp. −σ ε̂) itself, not D − x with its cancellation. A clipped D has none."""
    f = _net()
    net = lambda x, t: f(x.float(), t.float()).to(x.dtype) + 1e-3 * x * t.view(-1, 1)  # noqa: E731
    ladders = [(EpsDenoiser(net, VP), VP.sigmas(100)[:-1], -1),
               (ScoreDenoiser(net, VE), VE.sigmas(300), 1)]
    for batch in (1, 64):
        x = 30 * torch.randn(batch, 3, generator=torch.Generator().manual_seed(batch)).to(dtype)
        for denoiser, sigmas, sign in ladders:
            levels = sigmas.tolist()
            scales, field = denoiser.residuals_at_levels(levels, x)
            assert len(scales) == len(levels)
            for i, level in enumerate(levels):
                r = field(x, i)
                assert torch.equal((r * scales[i]).add_(x), denoiser(x, level)), (batch, level)
                sigma, t = network_time(denoiser.schedule, level, x)
                a = (1 + sigma.square()).rsqrt().view(-1, 1) if sign < 0 else 1.0
                want = net(a * x, t) * (sign * sigma.view(-1, 1))
                assert torch.equal(r * scales[i], want), (batch, level)
    assert EpsDenoiser(net, VP, clip=True).residuals_at_levels([1.0], x) is None


def test_draw_t_keeps_the_training_streams():
    """Regression: draw_batch draws idx, t, noise from one generator as it always did."""
    data = torch.rand(10, 3)
    for objective in ("vp_eps", "ve_score"):
        config = TrainConfig(preset="toy-mlp", objective=objective, T=50, t_min=0.01)
        x0, t, noise = draw_batch(data, 8, config, torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)
        idx = torch.randint(10, (8,), generator=g)
        if objective == "vp_eps":
            want_t = torch.randint(50, (8,), generator=g)
        else:
            want_t = (0.01 + 0.99 * torch.rand(8, generator=g, dtype=torch.float64)).float()
        want_noise = torch.randn(8, 3, generator=g)
        assert torch.equal(x0, data[idx]) and torch.equal(t, want_t)
        assert torch.equal(noise, want_noise) and t.dtype == want_t.dtype


def test_registry_and_wrong_schedules():
    assert isinstance(get_parameterization("vp_eps", VP), EpsPrediction)
    assert isinstance(get_parameterization("ve_score", VE), ScorePrediction)
    assert isinstance(TrainConfig(objective="ve_score").parameterization(), ScorePrediction)
    with pytest.raises(ValueError, match="unknown objective"):
        get_parameterization("x0", VP)
    with pytest.raises(ValueError, match="VPSchedule"):
        EpsPrediction(VE)
    with pytest.raises(ValueError, match="VESchedule"):
        ScorePrediction(VP)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_device_sync_per_call_on_cuda():
    """A number σ (a sampler's step) is checked on the host: the call never waits for the
    GPU. Tables are copied once, on the first call."""
    x = torch.randn(8, 3, device="cuda")
    w = torch.eye(3, device="cuda")
    cuda_net = lambda x, t: x @ w + t.view(-1, 1)  # noqa: E731
    for p, level in ((EpsPrediction(VP), float(VP.sigma(300))), (ScorePrediction(VE), 0.7)):
        p.denoise(cuda_net, x, level)  # warm-up: the tables move to the device
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = p.denoise(cuda_net, x, level)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert out.device.type == "cuda"
        cpu = p.denoise(lambda x, t: x @ w.cpu() + t.view(-1, 1), x.cpu(), level)
        torch.testing.assert_close(out.cpu(), cpu, rtol=1e-6, atol=1e-6)


def test_row_reader_gives_each_row_in_any_order():
    """Rows made a chunk at a time are the table's rows, read in order, backwards or by
    jumps across chunks; an index outside the table is refused."""
    table = torch.arange(30.0).view(10, 3)
    rows = RowReader(table, chunk=4)
    for i in [0, 1, 2, 3, 4, 9, 8, 0, 5, 5, 7, 3]:
        assert torch.equal(rows[i], table[i])
    assert len(rows) == 10
    for i in (10, -1):
        with pytest.raises(IndexError):
            rows[i]
