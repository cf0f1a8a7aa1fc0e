"""Noise schedules against closed forms: DDPM's linear β schedule and the toy VE SDE."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from memgen.diffusion.schedules import (VESchedule, VPSchedule, alpha_bar_from_sigma,
                                        sigma_from_alpha_bar)

F64 = torch.float64
VP = VPSchedule()


def test_betas_and_alphas_cumprod_match_direct_formulas():
    betas = VP.betas
    assert betas.dtype == F64 and betas.shape == (1000,)
    assert betas[0].item() == 1e-4 and betas[-1].item() == pytest.approx(0.02, rel=1e-15)
    # ᾱ_t = Π_{s≤t}(1 − β_s), β_s = β_min + s (β_max − β_min)/(T − 1), by plain Python products
    step = (0.02 - 1e-4) / 999
    for t in (0, 1, 10, 500, 999):
        direct = math.prod(1 - (1e-4 + s * step) for s in range(t + 1))
        assert VP.alphas_cumprod[t].item() == pytest.approx(direct, rel=1e-12)
    assert VP.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-15)
    # the textbook value for the DDPM linear schedule: ᾱ_{T−1} ≈ 4.036e-5
    assert VP.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)
    np.testing.assert_allclose(VP.alphas_cumprod.numpy(),
                               np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-13)
    # not the reference code's cumprod(β), which collapses to 0 immediately
    assert torch.cumprod(betas, 0)[1].item() < 1e-7 < VP.alphas_cumprod[1].item()


def test_sigma_scale_and_vp_std_are_consistent():
    t = torch.arange(1000, dtype=F64)
    ab = VP.alphas_cumprod
    torch.testing.assert_close(VP.scale(t), ab.sqrt(), rtol=1e-14, atol=0)
    torch.testing.assert_close(VP.sigma_vp(t), (1 - ab).sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(VP.sigma(t), ((1 - ab) / ab).sqrt(), rtol=0, atol=0)
    torch.testing.assert_close(VP.sigma(t) * VP.scale(t), VP.sigma_vp(t), rtol=1e-14, atol=0)
    assert VP.sigma(999) == pytest.approx(math.sqrt((1 - 4.0358e-5) / 4.0358e-5), rel=1e-4)
    assert isinstance(VP.sigma(3), float) and isinstance(VP.sigma(torch.tensor(3.0)), torch.Tensor)


def test_conversions_between_alpha_bar_and_sigma():
    ab = VP.alphas_cumprod
    torch.testing.assert_close(alpha_bar_from_sigma(VP.sigma(torch.arange(1000.0))), ab,
                               rtol=1e-13, atol=0)
    torch.testing.assert_close(sigma_from_alpha_bar(ab), VP._sigma_table, rtol=1e-13, atol=0)
    assert alpha_bar_from_sigma(0.0) == 1.0 and sigma_from_alpha_bar(1.0) == 0.0
    assert sigma_from_alpha_bar(alpha_bar_from_sigma(3.5)) == pytest.approx(3.5, rel=1e-14)


def test_t_from_sigma_inverts_sigma_on_the_grid_and_between():
    t = torch.arange(1000, dtype=F64)
    torch.testing.assert_close(VP.t_from_sigma(VP.sigma(t)), t, rtol=0, atol=1e-9)
    assert torch.equal(VP.t_from_sigma(VP.sigma(t), round=True), t.long())
    frac = torch.linspace(0, 999, 777, dtype=F64)
    torch.testing.assert_close(VP.t_from_sigma(VP.sigma(frac)), frac, rtol=0, atol=1e-9)
    assert VP.t_from_sigma(VP.sigma(417.3), round=True) == 417
    assert VP.t_from_sigma(VP.sigma(417.6), round=True) == 418
    assert isinstance(VP.t_from_sigma(1.0), float)


def test_t_from_sigma_accepts_a_float32_rounded_ladder():
    """Network denoisers see σ in the model's dtype: the float32-rounded ends of the ladder
    (σ_0 rounds below the table's minimum) must map back to their timesteps."""
    sig32 = VP.sigmas()[:-1].float().double()
    t = VP.t_from_sigma(sig32)
    torch.testing.assert_close(t, torch.arange(999, -1, -1, dtype=F64), rtol=0, atol=1e-4)
    assert torch.equal(VP.t_from_sigma(sig32, round=True), torch.arange(999, -1, -1))
    ve = VESchedule(sigma_max=0.1)
    assert ve.t_from_sigma(float(torch.tensor(0.1).float())) == 1.0


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.0, max_value=999.0))
def test_sigma_round_trip_property(t):
    s = VP.sigma(t)
    assert VP.sigma(math.floor(t)) <= s <= VP.sigma(min(math.ceil(t), 999))
    assert VP.t_from_sigma(s) == pytest.approx(t, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.1, max_value=50.0))
def test_ve_round_trip_property(t, sigma_max):
    ve = VESchedule(sigma_max=sigma_max)
    assert ve.sigma(t) == pytest.approx(sigma_max * math.sqrt(t), rel=1e-15)
    assert ve.t_from_sigma(ve.sigma(t)) == pytest.approx(t, rel=1e-12, abs=1e-300)


def test_vp_ladders_are_strictly_decreasing_and_end_in_zero():
    full = VP.sigmas()
    assert full.shape == (1001,) and full.dtype == F64
    assert torch.equal(full, VP.sigmas(1000))
    assert full[0].item() == VP.sigma(999) and full[-2].item() == VP.sigma(0)
    assert full[-1].item() == 0.0 and (full.diff() < 0).all()
    torch.testing.assert_close(full[:-1], VP.sigma(torch.arange(999, -1, -1, dtype=F64)),
                               rtol=0, atol=0)
    for steps in (1, 2, 7, 50, 100, 999):
        ts = VP.timesteps(steps)
        sig = VP.sigmas(steps)
        assert ts.shape == (steps,) and sig.shape == (steps + 1,)
        assert ts[0].item() == 999 and (steps == 1 or ts[-1].item() == 0)
        assert (ts.diff() < 0).all() and (sig.diff() < 0).all() and sig[-1].item() == 0
        gaps = -ts.diff()
        assert steps <= 2 or gaps.max() - gaps.min() <= 1  # evenly spaced up to rounding
        torch.testing.assert_close(sig[:-1], VP.sigma(ts.to(F64)), rtol=0, atol=0)


def test_ve_ladder_is_the_toy_euler_maruyama_grid():
    ve = VESchedule()
    sig = ve.sigmas(1000)
    assert sig.shape == (1000,) and (sig.diff() < 0).all()
    assert sig[0].item() == 1.0 and sig[-1].item() == pytest.approx(math.sqrt(1e-3), rel=1e-14)
    # equal steps in t: σ_i² − σ_{i+1}² = sigma_max² Δt with Δt = (1 − t_min)/(steps − 1)
    torch.testing.assert_close(-sig.square().diff(), torch.full((999,), 0.999 / 999, dtype=F64),
                               rtol=1e-9, atol=0)
    torch.testing.assert_close(VESchedule(sigma_max=3.0).sigmas(10), 3.0 * ve.sigmas(10))


@pytest.mark.parametrize("make", [
    lambda: VPSchedule(beta_min=0.0), lambda: VPSchedule(beta_min=0.1, beta_max=0.01),
    lambda: VPSchedule(beta_max=1.0), lambda: VPSchedule(T=1), lambda: VPSchedule(T=10.5),
    lambda: VP.sigma(-0.5), lambda: VP.sigma(999.5), lambda: VP.sigma(float("nan")),
    lambda: VP.t_from_sigma(0.0), lambda: VP.t_from_sigma(1e4), lambda: VP.t_from_sigma(1e-3),
    lambda: VP.sigmas(0), lambda: VP.sigmas(1001), lambda: VP.timesteps(2.5),
    lambda: VESchedule(sigma_max=0.0), lambda: VESchedule(t_min=0.0),
    lambda: VESchedule(t_min=1.0), lambda: VESchedule().sigmas(1),
    lambda: VESchedule().sigma(1.5), lambda: VESchedule().t_from_sigma(2.0),
    lambda: alpha_bar_from_sigma(-1.0), lambda: sigma_from_alpha_bar(0.0),
    lambda: sigma_from_alpha_bar(torch.tensor([0.5, 1.5])),
])
def test_bad_parameters_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_schedules_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        VP.T = 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        VESchedule().sigma_max = 2.0
