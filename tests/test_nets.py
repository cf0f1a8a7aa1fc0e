"""Tests for memgen.diffusion.nets: the DDPM U-Net, the Fourier-feature MLP and the presets."""

from __future__ import annotations

import dataclasses
import math
import re
import time

import pytest
import torch

from memgen.diffusion.nets import (PRESETS, NetConfig, ScoreMLP, UNet, count_parameters, get_preset,
                                   presets, timestep_embedding)
from memgen.diffusion.nets.unet import AttnBlock


def _tiny_unet(**kw) -> UNet:
    base = dict(channels=1, dim=16, dim_mults=(1, 2), num_res_blocks=1,
                attn_resolutions=(8,), dropout=0.0, image_size=16, groups=8)
    return UNet(**{**base, **kw})


def _meta_count(cfg: NetConfig) -> int:
    """Parameters of cfg's network, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return count_parameters(cfg.build())


def _perturb_output_conv(net: UNet, generator: torch.Generator) -> None:
    with torch.no_grad():
        net.conv_out.weight.copy_(0.1 * torch.randn(net.conv_out.weight.shape, generator=generator))


# ------------------------------------------------------------------ parameter counts


def test_cifar10_matches_ddpm_parameter_count():
    # Ho et al. 2020's CIFAR-10 model has 35.7M parameters (35,746,307 in its code);
    # the paper's Table 2 quotes the same 35.7M. Same layout -> same count to the unit.
    n = _meta_count(get_preset("cifar10"))
    assert n == 35_746_307
    assert abs(n - 35.7e6) / 35.7e6 < 0.002  # 0.13%: 35.7M is rounded to 3 digits


def test_mnist_parameter_count():
    # The paper's 24.5M: the reference code attends only where the side is exactly 16,
    # which a 28-px network never has, so the preset has no attention (24,515,585).
    n = _meta_count(get_preset("mnist"))
    assert n == 24_515_585
    assert abs(n - 24.5e6) / 24.5e6 < 0.001
    assert get_preset("fmnist") == get_preset("mnist")
    # attn_resolutions=(16,) would put attention at 14x14: 2 down + 3 up blocks of 263,680.
    with_attn = _meta_count(dataclasses.replace(get_preset("mnist"), attn_resolutions=(16,)))
    assert with_attn - n == 5 * 263_680


def test_church_parameter_count():
    # The paper's Table 2: initial width 96, 61.7M parameters (61,745,283: 0.07% off).
    n = _meta_count(get_preset("church"))
    assert n == 61_745_283
    assert abs(n - 61.7e6) / 61.7e6 < 0.001


def _documented_counts() -> dict[str, int]:
    """preset -> parameters, from the table in memgen.diffusion.nets.presets' docstring."""
    table = {}
    for line in presets.__doc__.splitlines():
        m = re.match(r"    ([a-z0-9/-]+)\s+([\d,]+)\s", line)
        if m:
            table.update(dict.fromkeys(m[1].split("/"), int(m[2].replace(",", ""))))
    return table


def test_docstring_parameter_table_matches_built_presets():
    table = _documented_counts()
    assert set(table) == set(PRESETS)
    assert {name: _meta_count(get_preset(name)) for name in PRESETS} == table
    church_128 = dataclasses.replace(get_preset("church"), dim=128)
    assert f"{_meta_count(church_128):,}" in presets.__doc__  # the width-128 note
    mnist_14 = dataclasses.replace(get_preset("mnist"), attn_resolutions=(14,))
    assert f"{_meta_count(mnist_14):,}" in presets.__doc__  # attention at 14×14


def test_attention_levels_follow_the_nearest_side():
    # 16 -> the 14x14 level at 28 px, the 16x16 level at 32 and 64 px
    mnist_attn = dataclasses.replace(get_preset("mnist"), attn_resolutions=(16,))
    with torch.device("meta"):
        nets = {name: get_preset(name).build() for name in ["cifar10", "church"]}
        nets["mnist"] = mnist_attn.build()
    assert nets["mnist"].sides == [28, 14, 7] and nets["mnist"].attn_sides == [14]
    assert nets["cifar10"].sides == [32, 16, 8, 4] and nets["cifar10"].attn_sides == [16]
    assert nets["church"].attn_sides == [16]
    n_attn = sum(isinstance(m, AttnBlock) for m in nets["cifar10"].modules())
    assert n_attn == 2 + 3 + 1  # down blocks + up blocks at 16x16 + middle


# ---------------------------------------------------------------- shapes and forwards


@pytest.mark.parametrize("name", ["fmnist-cpu-16", "fmnist-cpu-28"])
def test_cpu_presets_shapes(name):
    cfg = get_preset(name)
    net = cfg.build()
    x = torch.randn(2, cfg.channels, cfg.image_size, cfg.image_size)
    assert net(x, torch.tensor([0, 999])).shape == x.shape


def test_mnist_preset_forward_batch_one():
    net = get_preset("mnist").build().eval()
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        out = net(x, torch.tensor([500]))
    assert out.shape == (1, 1, 28, 28)
    assert torch.all(out == 0)  # zero-initialised output conv


def test_toy_mlp_preset_shapes():
    net = get_preset("toy-mlp").build()
    assert isinstance(net, ScoreMLP)
    assert net(torch.randn(5, 2), torch.rand(5)).shape == (5, 2)


@pytest.mark.parametrize("size, mults, sides", [
    (28, (1, 2, 2), [28, 14, 7]),
    (27, (1, 2, 2), [27, 14, 7]),
    (7, (1, 2, 2, 2), [7, 4, 2, 1]),
])
def test_odd_sizes_round_trip(size, mults, sides):
    net = _tiny_unet(image_size=size, dim_mults=mults, attn_resolutions=(16,))
    assert net.sides == sides
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
             for m in net.down if m.__class__.__name__ == "Downsample"]
    x = torch.randn(2, 1, size, size)
    assert net(x, torch.tensor([1.0, 2.0])).shape == x.shape
    assert seen == sides[1:]
    for h in hooks:
        h.remove()


def test_fresh_unet_outputs_exactly_zero():
    net = _tiny_unet()
    out = net(torch.randn(3, 1, 16, 16), torch.tensor([0, 10, 999]))
    assert torch.equal(out, torch.zeros_like(out))


def test_unet_samples_do_not_depend_on_their_batch():
    net = _tiny_unet().eval()
    _perturb_output_conv(net, torch.Generator().manual_seed(0))
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([3, 50, 400, 999])
    with torch.no_grad():
        full = net(x, t)
        single = torch.cat([net(x[i:i + 1], t[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)


def test_unet_depends_on_time_and_accepts_scalar_t():
    net = _tiny_unet().eval()
    _perturb_output_conv(net, torch.Generator().manual_seed(1))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        a, b = net(x, torch.tensor([10, 10])), net(x, torch.tensor([900, 900]))
        torch.testing.assert_close(net(x, 10), a)
    assert not torch.allclose(a, b)


# ------------------------------------------------------------------------ gradients


def test_gradients_reach_every_parameter_after_one_step():
    net = _tiny_unet()
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([1, 100, 500, 999])
    target = torch.randn_like(x)
    loss = (net(x, t) - target).square().mean()
    loss.backward()
    # zero output conv: only conv_out gets a gradient at first
    assert net.conv_in.weight.grad.abs().max() == 0
    assert net.conv_out.weight.grad.abs().max() > 0
    torch.optim.SGD(net.parameters(), lr=0.1).step()  # conv_out becomes non-zero
    net.zero_grad()
    (net(x, t) - target).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


# ---------------------------------------------------------------- embeddings and attention


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 1.0, 250.0])
    emb = timestep_embedding(t, 8)  # half = 4, freqs 10000^(-k/3)
    freqs = torch.tensor([10000.0 ** (-k / 3) for k in range(4)])
    expected = torch.cat([(t[:, None] * freqs).sin(), (t[:, None] * freqs).cos()], dim=-1)
    torch.testing.assert_close(emb, expected)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_attention_block_matches_explicit_softmax():
    g = torch.Generator().manual_seed(0)
    block = AttnBlock(8, groups=4)
    with torch.no_grad():
        block.proj.weight.copy_(torch.randn(block.proj.weight.shape, generator=g))
    x = torch.randn(2, 8, 3, 5, generator=g)
    q, k, v = block.qkv(block.norm(x)).flatten(2).chunk(3, dim=1)  # each (B, C, HW)
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(8), dim=-1)  # (B, HW, HW)
    h = (v @ w.transpose(1, 2)).reshape(2, 8, 3, 5)  # h_i = sum_j w_ij v_j
    torch.testing.assert_close(block(x), x + block.proj(h))


def test_fourier_embedding_formula():
    net = ScoreMLP(fourier_features=4, fourier_scale=3.0, seed=5)
    t = torch.tensor([0.0, 0.25, 1.0])
    angle = 2 * math.pi * t[:, None] * net.embed.W[None, :]
    expected = torch.cat([angle.sin(), angle.cos()], dim=-1)
    torch.testing.assert_close(net.embed(t), expected)
    assert not net.embed.W.requires_grad
    assert "embed.W" in net.state_dict()  # saved with the checkpoint


# ------------------------------------------------------------------ MLP determinism


def test_score_mlp_is_seeded_locally():
    state = torch.random.get_rng_state()
    a, b, c = ScoreMLP(seed=7), ScoreMLP(seed=7), ScoreMLP(seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a.embed.W, b.embed.W)
    assert not torch.equal(a.embed.W, c.embed.W)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_score_mlp_init_matches_pytorch_default_scale():
    net = ScoreMLP(dim=2, width=64, depth=2, fourier_features=8)
    first = net.net[0]
    bound = 1 / math.sqrt(2 + 16)
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.9 * bound
    assert count_parameters(net) == (18 * 64 + 64) + (64 * 64 + 64) + (64 * 2 + 2)


def test_score_mlp_scalar_t_broadcasts():
    net = ScoreMLP()
    x = torch.randn(3, 2)
    torch.testing.assert_close(net(x, 0.5), net(x, torch.full((3,), 0.5)))


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kw", [
    dict(dim=48),  # 48 channels, 32 groups
    dict(dim=15, groups=1),  # odd dim: no sinusoidal embedding
    dict(dim_mults=()),
    dict(num_res_blocks=0),
    dict(dropout=1.0),
    dict(channels=0),
])
def test_bad_unet_config_raises(kw):
    with pytest.raises(ValueError):
        UNet(**{**dict(dim=32, dim_mults=(1, 2), image_size=16), **kw})


def test_bad_inputs_raise():
    net = _tiny_unet()
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must be"):
        net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="x must have shape"):
        ScoreMLP(dim=2)(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError):
        ScoreMLP(depth=0)


def test_presets_registry():
    assert set(PRESETS) >= {"mnist", "fmnist", "cifar10", "church", "fmnist-cpu-16",
                            "fmnist-cpu-28", "toy-mlp"}
    with pytest.raises(ValueError, match="known: mnist"):
        get_preset("imagenet")
    with pytest.raises(ValueError, match="unknown net kind"):
        NetConfig(kind="gan").build()
    cfg = get_preset("cifar10")
    assert NetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 64


# ------------------------------------------------------------------------ timing


def test_cpu16_forward_backward_time():
    """Prints fwd+bwd seconds per batch of 32 (no assertion: machines differ)."""
    cfg = get_preset("fmnist-cpu-16")
    net = cfg.build()
    x, t = torch.randn(32, 1, 16, 16), torch.randint(0, 1000, (32,))
    net(x, t).square().mean().backward()  # warm-up
    times = []
    for _ in range(2):
        start = time.perf_counter()
        net.zero_grad()
        net(x, t).square().mean().backward()
        times.append(time.perf_counter() - start)
    print(f"fmnist-cpu-16 fwd+bwd, batch 32: {min(times):.3f} s "
          f"({count_parameters(net):,} params)")
