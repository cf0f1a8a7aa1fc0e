"""Training: the loss falls and samples land on the data; checkpoints, resume, DDP."""

import copy
import json
import math
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from memgen.diffusion.loaders import load_denoiser
from memgen.diffusion.rng import StackedGenerator
from memgen.diffusion.samplers import sample_euler_maruyama
import memgen.diffusion.training as T
from memgen.diffusion.nets import get_preset
from memgen.diffusion.train_step import FlatAdam, clip_flat
from memgen.diffusion.training import (TrainConfig, draw_batch, new_state, train, training_loss,
                                       update_ema)

TWO_POINTS = torch.tensor([[1.0, 0.0], [-0.6, 0.8]])


def _toy_config(**changes):
    base = dict(preset="toy-mlp", objective="ve_score", iterations=1500, batch_size=128, lr=2e-3,
                ema_decay=0.99, seed=1, log_every=50, checkpoint_every=10_000)
    base.update(changes)
    return TrainConfig(**base)


def test_training_on_two_points_lowers_the_loss_and_samples_land_on_them(tmp_path):
    """Two distinct points, each repeated 64 times so that a batch of 128 sees both."""
    config = _toy_config()
    state = train(config, TWO_POINTS.repeat(64, 1), tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 1500 and log[-1]["loss"] < 0.7 * log[0]["loss"]
    denoiser = load_denoiser(checkpoint=tmp_path / "checkpoint.pt").denoiser
    schedule = config.schedule()
    sigmas = schedule.sigmas(300)
    gen = StackedGenerator(list(range(200)))
    x = float(sigmas[0]) * gen.randn((200, 2))
    samples = sample_euler_maruyama(denoiser, x, sigmas, generator=gen)
    nearest = torch.cdist(samples, TWO_POINTS).min(1).values  # the points are 1.79 apart
    assert (nearest < 0.25).float().mean() > 0.9 and nearest.median() < 0.15
    assert state.step == 1500


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    config = _toy_config(iterations=5)
    state = train(config, TWO_POINTS, tmp_path, progress=False)
    denoiser = load_denoiser(checkpoint=tmp_path / "checkpoint.pt").denoiser
    x, t = torch.randn(7, 2), torch.rand(7)
    torch.testing.assert_close(denoiser.net(x, t), state.ema(x, t), rtol=0, atol=0)
    raw = load_denoiser(checkpoint=tmp_path / "checkpoint.pt", ema=False).denoiser
    torch.testing.assert_close(raw.net(x, t), state.model(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("preset, objective", [("toy-mlp", "ve_score"),
                                               ("fmnist-cpu-16", "vp_eps")])
def test_resume_continues_the_same_run(tmp_path, preset, objective):
    config = _toy_config(preset=preset, objective=objective, iterations=8, log_every=2,
                         checkpoint_every=4)
    data = TWO_POINTS if preset == "toy-mlp" else torch.rand(3, 1, 16, 16) * 2 - 1
    whole = train(config, data, tmp_path / "whole", progress=False)
    train(config, data, tmp_path / "parts", progress=False, stop_after=5)
    resumed = train(config, data, tmp_path / "parts", progress=False)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(whole.ema.state_dict().values(), resumed.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    steps = [[json.loads(line)["step"] for line in (tmp_path / d / "log.jsonl").open()]
             for d in ("whole", "parts")]
    assert steps[0] == steps[1] == [2, 4, 6, 8]


def test_resume_refuses_another_config(tmp_path):
    train(_toy_config(iterations=2), TWO_POINTS, tmp_path, progress=False)
    with pytest.raises(ValueError, match="another config"):
        train(_toy_config(iterations=3, lr=1e-4), TWO_POINTS, tmp_path, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fixed_batch(config):
    """The same (x0, t, noise) in every process."""
    gen = torch.Generator().manual_seed(0)
    return draw_batch(torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1, 8, config, gen)


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    config = _toy_config(preset="fmnist-cpu-16", objective="vp_eps")
    x0, t, noise = _fixed_batch(config)
    half = slice(rank * 4, rank * 4 + 4)
    model = torch.nn.parallel.DistributedDataParallel(new_state(config, torch.device("cpu")).model)
    training_loss(model, x0[half], t[half], noise[half], config, config.schedule()).backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
    dist.destroy_process_group()


def test_two_process_ddp_gives_the_full_batch_gradient(tmp_path):
    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    config = _toy_config(preset="fmnist-cpu-16", objective="vp_eps")
    x0, t, noise = _fixed_batch(config)
    model = new_state(config, torch.device("cpu")).model
    training_loss(model, x0, t, noise, config, config.schedule()).backward()
    ddp = torch.load(out, weights_only=True)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp[name], p.grad, rtol=1e-5, atol=1e-7)


def test_torchrun_end_to_end(tmp_path):
    data = tmp_path / "train.npz"
    np.savez(data, samples=np.random.default_rng(0).uniform(-1, 1, (4, 2)).astype(np.float32))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), "-m", "memgen", "train", "--train", str(data),
           "--preset", "toy-mlp", "--iterations", "6", "--batch-size", "4",
           "--out", str(tmp_path / "run")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert payload["step"] == 6 and len(payload["generators"]) == 2


def test_fixed_batch_draws_the_full_batch_for_small_K(tmp_path):
    seen = []
    import memgen.diffusion.training as T

    real = T.draw_batch

    def spy(data, batch, config, generator):
        seen.append(batch)
        return real(data, batch, config, generator)

    T.draw_batch = spy
    try:
        train(_toy_config(iterations=2, batch_size=16), TWO_POINTS, tmp_path / "a", progress=False)
        train(_toy_config(iterations=2, batch_size=16, fixed_batch=True), TWO_POINTS,
              tmp_path / "b", progress=False)
    finally:
        T.draw_batch = real
    assert seen == [2, 2, 16, 16]


# --------------------------------------------------------------------------------- EMA


def _weight_sequence(k=30, seed=0):
    """A linear layer and the weights θ_1..θ_k it is given, one per step."""
    layer = torch.nn.Linear(3, 2)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # θ_0 seeded too: every call starts from the same weights
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return layer, [[torch.randn(p.shape, generator=gen) for p in layer.parameters()]
                   for _ in range(k)]


def _run_ema(decay, warmup, k=30):
    from memgen.diffusion.training import update_ema

    layer, thetas = _weight_sequence(k)
    ema = copy.deepcopy(layer).requires_grad_(False)
    start = [p.detach().clone() for p in layer.parameters()]
    for step, theta in enumerate(thetas):
        with torch.no_grad():
            for p, v in zip(layer.parameters(), theta):
                p.copy_(v)
        update_ema(ema, layer, decay, step, warmup)
    return ema, layer, start, thetas


def test_ema_without_warmup_is_the_geometric_average():
    """ema_k = d^k θ_0 + (1 − d) Σ_{j=1..k} d^{k−j} θ_j."""
    d, k = 0.8, 30
    ema, _, start, thetas = _run_ema(d, warmup=False, k=k)
    for i, p in enumerate(ema.parameters()):
        want = d**k * start[i].double() + (1 - d) * sum(
            d ** (k - j) * thetas[j - 1][i].double() for j in range(1, k + 1))
        torch.testing.assert_close(p.double(), want, rtol=0, atol=1e-6)


def test_warmup_makes_0999_and_09999_identical_early():
    """min(d, (1 + k)/(10 + k)) < 0.999 for k < 8,990: both decays give one EMA."""
    a = [p.clone() for p in _run_ema(0.999, True)[0].parameters()]
    b = [p.clone() for p in _run_ema(0.9999, True)[0].parameters()]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = [p.clone() for p in _run_ema(0.999, False)[0].parameters()]
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_ema_decay_zero_is_no_ema(tmp_path):
    ema, layer, _, _ = _run_ema(0.0, warmup=False)
    assert all(torch.equal(e, p) for e, p in zip(ema.parameters(), layer.parameters()))
    state = train(_toy_config(iterations=4, ema_decay=0.0, ema_warmup=False), TWO_POINTS,
                  tmp_path, progress=False)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key, value in payload["model"].items():
        assert torch.equal(payload["ema"][key], value), key
    assert all(torch.equal(e, p) for e, p in zip(state.ema.parameters(),
                                                  state.model.parameters()))


def test_ema_warmup_is_part_of_the_trajectory_and_old_checkpoints_resume(tmp_path):
    from dataclasses import asdict

    config = _toy_config(iterations=2)
    old = {k: v for k, v in asdict(config).items() if k != "ema_warmup"}  # before the field
    assert TrainConfig.from_json(json.dumps(old)).trajectory() == config.trajectory()
    assert _toy_config(ema_warmup=False).trajectory() != config.trajectory()
    train(config, TWO_POINTS, tmp_path, progress=False)
    with pytest.raises(ValueError, match="another config"):
        train(_toy_config(iterations=3, ema_warmup=False), TWO_POINTS, tmp_path, progress=False)


def test_cli_train_ema_options(tmp_path):
    from click.testing import CliRunner

    from memgen.cli import cli

    data = tmp_path / "train.npz"
    np.savez(data, samples=TWO_POINTS.numpy())
    runner = CliRunner()
    help_text = runner.invoke(cli, ["train", "--help"]).output
    assert "--no-ema-warmup" in help_text and "reduce-overhead" in help_text
    result = runner.invoke(cli, ["train", "--train", str(data), "--preset", "toy-mlp",
                                 "--iterations", "2", "--ema", "0", "--no-ema-warmup",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    config = TrainConfig.from_json(torch.load(tmp_path / "run" / "checkpoint.pt",
                                              weights_only=True)["config"])
    assert config.ema_warmup is False and config.ema_decay == 0.0 and config.compile == "none"


# ------------------------------------------------------------------- the loop's pieces


def _two_toy_nets():
    torch.manual_seed(0)
    a = get_preset("toy-mlp").build()
    return a, copy.deepcopy(a)


def _same_grads(gen, *param_lists):
    for ps in zip(*param_lists):
        g = torch.randn(ps[0].shape, generator=gen)
        for p in ps:
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)  # FlatAdam's .grad: a view of its buffer


def test_flat_adam_is_torchs_adam_to_the_bit_and_speaks_its_state_dict():
    """FlatAdam (one buffer) = torch's fused Adam on the tensors, weights and state_dict
    alike; torch's state_dict (an old checkpoint's) loads into it and resumes the same."""
    a, b = _two_toy_nets()
    flat = FlatAdam(a.parameters(), 1e-2)
    ref = torch.optim.Adam(b.parameters(), lr=1e-2, fused=True)
    assert flat.state_dict()["state"] == ref.state_dict()["state"] == {}
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        _same_grads(gen, a.parameters(), b.parameters())
        flat.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    got, want = flat.state_dict(), ref.state_dict()
    assert got["param_groups"] == want["param_groups"]
    assert got["state"].keys() == want["state"].keys()
    for i, entry in want["state"].items():
        assert entry.keys() == got["state"][i].keys()
        assert all(torch.equal(got["state"][i][k], v) for k, v in entry.items())
    c = copy.deepcopy(b)
    resumed = FlatAdam(c.parameters(), 1e-2)
    resumed.load_state_dict(ref.state_dict())
    for _ in range(2):
        _same_grads(gen, c.parameters(), b.parameters())
        resumed.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(c.parameters(), b.parameters()))


def test_flat_adam_refuses_a_lost_gradient_and_a_foreign_state():
    """The parameters are views of one buffer; a .grad set to None (model.zero_grad()) is an
    error at the next step, not a step without it; a state for other parameters is refused."""
    a, b = _two_toy_nets()
    flat = FlatAdam(a.parameters(), 1e-3)
    assert all(p.data_ptr() == flat.flat.data_ptr() + 4 * offset for p, offset in
               zip(a.parameters(), np.cumsum([0] + [p.numel() for p in a.parameters()])))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    a.zero_grad()
    with pytest.raises(RuntimeError, match="no longer a view"):
        flat.step()
    with pytest.raises(ValueError, match="one group of 10"):
        flat.load_state_dict(torch.optim.Adam(list(b.parameters())[:3]).state_dict())
    with pytest.raises(ValueError, match="several dtypes"):
        FlatAdam([torch.nn.Parameter(torch.zeros(2)),
                  torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))], 1e-3)


@pytest.mark.parametrize("host", [True, False])
def test_clip_flat_is_torchs_clip_grad_norm(host):
    """clip_flat on one buffer = nn.utils.clip_grad_norm_ on the tensors it holds, to the
    rounding of the norm: the factor read on the host or kept on the device, clipping or
    not (then the gradients are untouched, to the bit)."""
    gen = torch.Generator().manual_seed(0)
    shapes = ((64, 34), (64,), (2,))
    for scale in (1e-3, 1.0, 1e3):  # the factor clamped to 1, and below it
        flat = scale * torch.randn(sum(math.prod(s) for s in shapes), generator=gen)
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for p, g in zip(params, flat.split([math.prod(s) for s in shapes])):
            p.grad = g.reshape(p.shape).clone()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        want = torch.cat([p.grad.reshape(-1) for p in params])
        unclipped = flat.clone()
        clip_flat(flat, 1.0, host=host)
        if scale < 0.01:
            assert torch.equal(flat, unclipped)
        else:
            assert not torch.allclose(flat, unclipped)
        torch.testing.assert_close(flat, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("preset, objective", [("toy-mlp", "ve_score"),
                                               ("fmnist-cpu-16", "vp_eps")])
@pytest.mark.parametrize("grad_clip", [1e9, 0.05])
def test_the_loop_gives_the_plain_loops_numbers(tmp_path, preset, objective, grad_clip):
    """train() (batches drawn ahead, FlatAdam, the step's clipping, zeroing and EMA on flat
    buffers, compile off) = the plain loop with torch's fused Adam on the parameters, its
    clip_grad_norm_ and zero_grad: to the bit where no step clips; where every step clips,
    to the rounding of the norm (one reduction against a norm of per-tensor norms)."""
    config = _toy_config(preset=preset, objective=objective, iterations=6, batch_size=3,
                         checkpoint_every=4, log_every=3, grad_clip=grad_clip)
    data = TWO_POINTS.repeat(2, 1) if preset == "toy-mlp" else torch.rand(5, 1, 16, 16) * 2 - 1
    got = train(config, data, tmp_path, progress=False)
    state, loss = new_state(config, torch.device("cpu")), config.parameterization().loss
    start = [v.clone() for v in (*state.model.state_dict().values(),
                                 *state.ema.state_dict().values())]
    adam = torch.optim.Adam(state.model.parameters(), lr=config.lr, fused=True)
    norms = []
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(torch.Generator().manual_seed(config.seed + 10_000).get_state())
        for step in range(config.iterations):
            x0, t, noise = draw_batch(data, 3, config, state.generator)
            value = loss(state.model.train(), x0, t, noise)
            adam.zero_grad(set_to_none=True)
            value.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(state.model.parameters(),
                                                              config.grad_clip)))
            adam.step()
            update_ema(state.ema, state.model, config.ema_decay, step, config.ema_warmup)
    clipped = [n > grad_clip for n in norms]
    assert all(clipped) if grad_clip < 1 else not any(clipped)
    got = [*got.model.state_dict().values(), *got.ema.state_dict().values()]
    want = [*state.model.state_dict().values(), *state.ema.state_dict().values()]
    if grad_clip > 1:
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    else:  # Adam's division by √v turns the norm's last bit into noise where g ≈ 0: all
        # weights together, the difference is a rounding error of what the steps moved
        moved = torch.cat([(b - b0).reshape(-1) for b, b0 in zip(want, start)]).norm()
        apart = torch.cat([(a - b).reshape(-1) for a, b in zip(got, want)]).norm()
        assert apart < 1e-4 * moved, (float(apart), float(moved))


def test_batches_are_drawn_ahead_but_never_past_a_saved_state(tmp_path, monkeypatch):
    """Every checkpoint and snapshot holds the batch generator's state after exactly its
    step's draws, though the loop draws several steps' batches at a time."""
    saved = []
    real = T.save_checkpoint
    monkeypatch.setattr(T, "AHEAD_STEPS", 4)
    monkeypatch.setattr(T, "save_checkpoint", lambda path, state, config, rng: (
        saved.append((state.step, rng[0][0])), real(path, state, config, rng)))
    config = _toy_config(iterations=11, snapshots=(5,), checkpoint_every=3)
    train(config, TWO_POINTS, tmp_path, progress=False)
    assert [step for step, _ in saved] == [3, 5, 6, 9, 11, 11]
    for step, state in saved:
        gen = torch.Generator().manual_seed(config.seed + 1)
        for _ in range(step):
            draw_batch(TWO_POINTS, 2, config, gen)
        assert torch.equal(gen.get_state(), state), step


def _trained(tmp_path, name, **changes):
    state = train(_toy_config(iterations=3, **changes), TWO_POINTS, tmp_path / name,
                  progress=False)
    return [t.clone() for t in (*state.model.state_dict().values(),
                                *state.ema.state_dict().values())]


def test_compile_off_never_compiles_and_a_failed_compile_runs_eagerly(tmp_path, monkeypatch):
    """compile "none" does not touch torch.compile; where compiling fails (at the wrap, at
    the first call, no C++ compiler say, or at the first backward) one warning, and the
    eager run's numbers."""
    def unavailable(fn, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")

    def fails_when_called(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return compiled

    class FailsBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, loss):
            return loss.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("the backward graph did not compile")

    def fails_in_backward(fn, **kwargs):
        return lambda *args: FailsBackward.apply(fn(*args))

    calls = []

    def works(fn, mode):
        calls.append(mode)
        return lambda *args: fn(*args)

    monkeypatch.setattr(torch, "compile", unavailable)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # compile "none": not a single warning
        eager = _trained(tmp_path, "none")
    for name, fake in (("wrap", unavailable), ("call", fails_when_called),
                       ("backward", fails_in_backward), ("ok", works)):
        monkeypatch.setattr(torch, "compile", fake)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = _trained(tmp_path, name, compile="reduce-overhead")
        failed = [w for w in caught if "torch.compile failed" in str(w.message)]
        assert len(failed) == (name != "ok") and all("\n" not in str(w.message) for w in failed)
        assert all(torch.equal(a, b) for a, b in zip(got, eager)), name
    assert calls == ["reduce-overhead"]


def test_compile_is_part_of_the_trajectory_and_old_checkpoints_resume():
    from dataclasses import asdict

    config = _toy_config(iterations=2)
    old = {k: v for k, v in asdict(config).items() if k != "compile"}  # before the field
    assert TrainConfig.from_json(json.dumps(old)).trajectory() == config.trajectory()
    assert _toy_config(compile="default").trajectory() != config.trajectory()
    with pytest.raises(ValueError, match="compile mode"):
        _toy_config(compile="fast")
