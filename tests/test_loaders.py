"""The one denoiser loader: each source gives the denoiser the old per-site code built (the
same bits), with its schedule, sample shape and dtype; bad combinations are refused."""

import numpy as np
import pytest
import torch
from model_fixtures import scripted_eps

from memgen.cli.models import model_from_options
from memgen.diffusion.denoisers import EmpiricalDenoiser, EpsDenoiser, ScoreDenoiser
from memgen.diffusion.loaders import load_denoiser
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _train_set(shape=(6, 2), seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_exact_source_in_each_callers_dtype():
    """float32 (generate, diagnose's model, the sweep) and float64 (basins, diagnose's
    reference): each bit for bit what its caller built by hand before."""
    train_set = _train_set()
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    model = load_denoiser(exact=train_set, schedule="vp")
    assert model.schedule == VPSchedule() and model.shape == (2,)
    assert model.dtype == torch.float32
    old32 = EmpiricalDenoiser(torch.from_numpy(train_set))(x, 0.4)
    assert torch.equal(model.denoiser(x, 0.4), old32)
    wide = load_denoiser(exact=train_set, exact_dtype=torch.float64)
    assert wide.schedule is None and wide.dtype == torch.float64
    old64 = EmpiricalDenoiser(torch.from_numpy(train_set).double())(x.double(), 0.4)
    assert torch.equal(wide.denoiser(x.double(), 0.4), old64)
    assert not torch.equal(old32.double(), old64)  # why each caller keeps its own dtype
    assert load_denoiser(exact=train_set, schedule=VESchedule(3.0)).schedule == VESchedule(3.0)


def test_exact_source_from_the_cli_file(tmp_path):
    train_set = _train_set((4, 1, 8, 8))
    np.savez(tmp_path / "t.npz", samples=train_set)
    model = model_from_options({"exact": str(tmp_path / "t.npz")}, schedule="ve")
    assert model.schedule == VESchedule() and model.shape == (1, 8, 8)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    want = EmpiricalDenoiser(torch.from_numpy(train_set))(x, 0.3)
    assert torch.equal(model.denoiser(x, 0.3), want)
    with pytest.raises(ValueError, match="--exact"):
        model_from_options({"exact": str(tmp_path / "missing.npz")})


@pytest.mark.parametrize("preset, objective, shape", [("toy-mlp", "ve_score", (2,)),
                                                      ("fmnist-cpu-16", "vp_eps", (1, 16, 16))])
def test_checkpoint_source_is_the_trained_network(tmp_path, preset, objective, shape):
    """The EMA network (or the raw one) behind the family's formula, its schedule and shape."""
    config = TrainConfig(preset=preset, objective=objective, iterations=2, batch_size=4,
                         ema_decay=0.5, ema_warmup=False, log_every=1, seed=2)
    data = torch.from_numpy(_train_set((3, *shape)))
    state = train(config, data, tmp_path, progress=False)
    model = load_denoiser(checkpoint=tmp_path / "checkpoint.pt")
    assert model.shape == shape and model.dtype == torch.float32
    assert model.schedule == config.schedule()
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(3))
    sigma = 0.5
    s = torch.full((4,), sigma)
    t = model.schedule.t_from_sigma(s.double()).float()
    view = (-1,) + (1,) * len(shape)
    for loaded, net in ((model, state.ema),
                        (load_denoiser(checkpoint=tmp_path / "checkpoint.pt", ema=False),
                         state.model)):
        with torch.no_grad():
            if objective == "vp_eps":
                assert isinstance(loaded.denoiser, EpsDenoiser) and not loaded.denoiser.clip
                a = (1 + s.square()).rsqrt().view(view)
                want = x - s.view(view) * net(a * x, t)
            else:
                assert isinstance(loaded.denoiser, ScoreDenoiser)
                want = x + s.view(view) * net(x, t)
            torch.testing.assert_close(loaded.denoiser(x, sigma), want, rtol=0, atol=0)
    clipped = load_denoiser(checkpoint=tmp_path / "checkpoint.pt", clip=True).denoiser
    assert clipped.clip if objective == "vp_eps" else not hasattr(clipped, "clip")
    with pytest.raises(ValueError, match="own schedule"):
        load_denoiser(checkpoint=tmp_path / "checkpoint.pt", schedule="vp")


def test_torchscript_source(tmp_path):
    y = torch.full((1, 4, 4), 0.25)
    path = scripted_eps(tmp_path / "eps.pt", y)
    model = load_denoiser(torchscript=path, shape=(1, 4, 4))
    assert model.schedule == VPSchedule() and model.shape == (1, 4, 4)
    assert isinstance(model.denoiser, EpsDenoiser)
    out = model.denoiser(torch.randn(3, 1, 4, 4), float(VPSchedule().sigma(500)))
    torch.testing.assert_close(out, y.expand(3, 1, 4, 4), rtol=1e-4, atol=1e-4)
    assert load_denoiser(torchscript=path, shape=(1, 4, 4), clip=True).denoiser.clip
    with pytest.raises(ValueError, match="sample shape"):
        load_denoiser(torchscript=path)
    with pytest.raises(ValueError, match="VP schedule"):
        load_denoiser(torchscript=path, shape=(1, 4, 4), schedule="ve")
    with pytest.raises(ValueError, match="no such TorchScript"):
        load_denoiser(torchscript=tmp_path / "missing.pt", shape=(1, 4, 4))
    with pytest.raises(ValueError, match="--shape"):
        model_from_options({"torchscript": str(path)})


def test_exactly_one_source_and_no_stray_options():
    train_set = _train_set()
    with pytest.raises(ValueError, match="exactly one model source"):
        load_denoiser()
    with pytest.raises(ValueError, match="exactly one model source"):
        load_denoiser(exact=train_set, torchscript="eps.pt")
    with pytest.raises(ValueError, match="shape"):
        load_denoiser(exact=train_set, shape=(2,))
    with pytest.raises(ValueError, match="unknown schedule"):
        load_denoiser(exact=train_set, schedule="edm")
