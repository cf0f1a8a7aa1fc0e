"""The paper authors' checkpoints (``memgen.diffusion.reference``): their network's outputs,
computed by their own code, reproduced from their state dict.

How tests/data/reference_unet.npz was made (once, in a scratch folder outside this
repository; none of their code is in memgen):

* their code: Lemon-cmd/Diffusion-Models-and-Associative-Memory at commit
  32cc23011d31242fa1ea8de5958c97045ed218a7, exported with
  ``git --git-dir=<mirror> archive HEAD | tar -x -C /tmp/refscratch/theirs``; only its
  ``src/`` package (``from src import Unet``, i.e. ``src/models/ddpm.py``) was imported, with
  memgen's .venv (torch 2.13.0+cpu, numpy 2.4.6; their network needs only torch).
* the network: ``Unet(image_size=8, in_channels=3, dim=32, dim_mults=(1, 1),
  attn_resolutions=(4,), num_res_blocks=1, dropout=0.1)`` (``CONFIG`` below; their
  GroupNorm has 32 groups, so 32 is the smallest width), built after
  ``torch.manual_seed(0)``, then ``.eval()``.
* the weights: ``rng = np.random.default_rng(20250527)``; for each entry of
  ``net.state_dict()`` in order, ``code = clip(round(rng.standard_normal(shape)), -8, 8)``,
  plus 4 for GroupNorm scales (1-D ``*.weight``), times 2**-e with e = round(log2
  sqrt(fan_in)) for kernels and matrices (fan_in = shape[0] for the attention/shortcut
  ``NIN.W``, which is (in, out), else prod(shape[1:])) and e = 2 for vectors. Those values
  are exact in float16, so the file stores them as float16 under ``state/<their name>``
  (what ``K.pt``'s ``ema`` would hold, in float32) and stays under 200 KB.
* the inputs and outputs: ``x = rng.standard_normal((4, 3, 8, 8))`` (float32, drawn after the
  weights), ``t = [0, 7, 500, 999]`` (int64), ``eps = net(x, t)`` under ``torch.no_grad()``
  in float32 on the CPU; ``np.savez_compressed(out, x=x, t=t, eps=eps, **state)``.
* the commands: ``cd /tmp/refscratch/work && OMP_NUM_THREADS=1
  /work/main/.venv/bin/python make_fixture.py reference_unet.npz
  reference_unet_layouts.json``, then both files copied to tests/data/.

tests/data/reference_unet_layouts.json, from the same script: for each of their
``configs/{mnist,cifar10,church}.yaml``, the ``model:`` section and the names and shapes of
their network's state dict at that config (dim 128; the sizes of the released checkpoints).

In the scratch folder the same comparison (their module against memgen's, random weights,
t = 0, 123, 999) over the fixture's and eleven more architectures (dims 32 and 64;
multipliers (1,), (1, 2), (1, 2, 2), (2, 1, 3), (1, 2, 2, 2), (1, 1, 2, 2, 4, 4); attention at
none, one or two levels; 0 to 3 residual blocks; 8 to 64 px; 1 to 3 channels; convolution-free
resampling; the relu, elu, lrelu and swish activations) gave identical float32 outputs, and a
``K.pt`` written as their ``train_unet.py`` writes it (``args`` from their simple_parsing
parser: simple_parsing 0.1.5, their pin, installed with ``pip install --no-deps --target``
into the scratch folder) loaded with ``torch.load(weights_only=True)`` as described in the
module, its own ``args.model`` giving the config.
"""

import argparse
import json
import pathlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from memgen.cli import cli
from memgen.diffusion.denoisers import EpsDenoiser
from memgen.diffusion.loaders import load_denoiser
from memgen.diffusion.nets.reference_unet import ReferenceConfig, ReferenceUNet
from memgen.diffusion.parameterization import network_time
from memgen.diffusion.reference import load_reference, load_reference_checkpoint
from memgen.diffusion.schedules import VPSchedule
from memgen.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

DATA = Path(__file__).parent / "data"
CONFIG = dict(image_size=8, in_channels=3, dim=32, dim_mults=(1, 1), attn_resolutions=(4,),
              num_res_blocks=1, dropout=0.1)
TOL = 1e-5


@pytest.fixture(scope="module")
def fixture():
    with np.load(DATA / "reference_unet.npz", allow_pickle=False) as z:
        state = {k[len("state/"):]: torch.from_numpy(z[k].astype(np.float32))
                 for k in z.files if k.startswith("state/")}
        return state, torch.from_numpy(z["x"]), torch.from_numpy(z["t"]), torch.from_numpy(z["eps"])


def _raw(state):
    """A different 'model' state dict, to tell the EMA weights from the raw ones."""
    return {k: v * 0.5 for k, v in state.items()}


def _write(path, **payload):
    torch.save(payload, path)
    return path


def _their_yaml(path):
    """Their YAML format: multipliers and attention sides as strings, a train: section."""
    text = {"data": {"data_name": "cifar10"},
            "train": {"prediction_type": "epsilon", "beta_schedule": "linear", "timesteps": 1000},
            "model": dict(CONFIG, dim_mults="1,1", attn_resolutions=4)}
    path.write_text(yaml.safe_dump(text))
    return path


def test_forward_equals_their_network(fixture, tmp_path):
    """EMA weights by default; the mapping and their YAML give the same network."""
    state, x, t, eps = fixture
    ckpt = _write(tmp_path / "2.pt", model=_raw(state), ema=state, opt={}, iterations=7)
    for config in (CONFIG, _their_yaml(tmp_path / "their.yaml")):
        net = load_reference_checkpoint(ckpt, config)
        assert isinstance(net, ReferenceUNet) and not net.training
        with torch.no_grad():
            out = net(x, t)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, eps, rtol=0, atol=TOL)


def test_raw_weights_and_ddp_prefix(fixture, tmp_path):
    state, x, t, eps = fixture
    ddp = {f"module.{k}": v for k, v in state.items()}
    ckpt = _write(tmp_path / "2.pt", model=_raw(ddp), ema=ddp)
    with torch.no_grad():
        torch.testing.assert_close(load_reference_checkpoint(ckpt, CONFIG)(x, t), eps,
                                   rtol=0, atol=TOL)
    raw = load_reference_checkpoint(ckpt, CONFIG, ema=False).state_dict()
    assert raw.keys() == state.keys()
    assert all(torch.equal(raw[k], v) for k, v in _raw(state).items())


def _one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_clear_errors(fixture, tmp_path):
    """Missing file, missing EMA (or model), weights that do not fit the config."""
    state = fixture[0]
    _one_line_error("no such reference checkpoint", load_reference_checkpoint,
                    tmp_path / "missing.pt", CONFIG)
    no_ema = _write(tmp_path / "a.pt", model=state, opt={})
    message = _one_line_error("no 'ema' weights", load_reference_checkpoint, no_ema, CONFIG)
    assert "ema=False" in message
    load_reference_checkpoint(no_ema, CONFIG, ema=False)  # the raw weights are there
    _one_line_error("no 'model' weights", load_reference_checkpoint,
                    _write(tmp_path / "b.pt", ema=state), CONFIG, ema=False)
    wider = dict(CONFIG, dim_mults=(1, 2))
    message = _one_line_error("do not fit the config", load_reference_checkpoint,
                              _write(tmp_path / "c.pt", ema=state), wider)
    assert "wrong shape" in message and "dim_mults=(1, 2)" in message
    partial = {k: v for k, v in state.items() if k != "all_modules.11.NIN_0.W"}
    message = _one_line_error("missing all_modules.11.NIN_0.W", load_reference_checkpoint,
                              _write(tmp_path / "d.pt", ema=partial), CONFIG)
    _one_line_error("not a readable torch checkpoint", load_reference_checkpoint,
                    _write_text(tmp_path / "e.pt", "not a checkpoint"), CONFIG)
    _one_line_error("not a state dict of tensors", load_reference_checkpoint,
                    _write(tmp_path / "f.pt", ema={"w": 1.0}), CONFIG)
    _one_line_error("no args; give their YAML", load_reference_checkpoint,
                    _write(tmp_path / "g.pt", ema=state), None)
    _one_line_error("multiple of 32", ReferenceConfig, dim=16)
    _one_line_error("divisible by 2", ReferenceConfig, image_size=28, dim_mults=(1, 2, 2, 2))
    _one_line_error("unknown key", ReferenceConfig.from_mapping, dict(CONFIG, width=3))


def _write_text(path, text):
    path.write_text(text)
    return path


# stand-ins for their parse_utils dataclasses: pickled under this module's name, a class
# memgen never imports when it reads the checkpoint
@dataclass
class ModelOptions:
    image_size: int = 8
    in_channels: int = 3
    dim: int = 32
    dim_mults: tuple = (1, 1)
    attn_resolutions: tuple = (4,)
    num_res_blocks: int = 1
    dropout: float = 0.1
    conditional: bool = True
    resamp_with_conv: bool = True
    nonlinearity: str = "swish"
    scale_by_sigma: bool = False


@dataclass
class TrainOptions:
    prediction_type: str = "epsilon"
    beta_schedule: str = "linear"
    timesteps: int = 1000


CALLS = []


def _record(*args):
    CALLS.append(args)
    return args


class Trap:
    """Unpickling this calls ``_record``: a stand-in for code a checkpoint could run."""

    def __reduce__(self):
        return (_record, ("ran",))


def test_their_args_are_read_as_data_without_running_code(fixture, tmp_path):
    """``args`` (a Namespace of their dataclasses and a PosixPath) under weights_only."""
    state, x, t, eps = fixture
    args = argparse.Namespace(config_path=[pathlib.PosixPath("configs/cifar10.yaml")],
                              model=ModelOptions(), train=TrainOptions(), trap=Trap())
    ckpt = _write(tmp_path / "2.pt", model=_raw(state), ema=state, args=args, iterations=3,
                  opt=torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))]).state_dict())
    CALLS.clear()
    loaded = load_reference(ckpt)  # no config: the checkpoint's own args.model
    assert CALLS == []
    assert loaded.config == ReferenceConfig.from_mapping(CONFIG)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x, t), eps, rtol=0, atol=TOL)
    _one_line_error("disagrees with the checkpoint's own args on dim 64",
                    load_reference, ckpt, dict(CONFIG, dim=64))
    with pytest.raises(Exception):  # what weights_only alone says of the same file
        torch.load(ckpt, weights_only=True)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "church"])
def test_layout_of_their_configs(name):
    """Their state-dict names and shapes at each of their configs (dim 128): the released
    checkpoints fit. 28 px with attn_resolutions 16: attention only in the middle."""
    layout = json.loads((DATA / "reference_unet_layouts.json").read_text())[name]
    config = ReferenceConfig.from_mapping(layout["model"])
    with torch.device("meta"):
        net = ReferenceUNet(config)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == layout["state"]


def test_their_schedule_is_vpschedule():
    """diffusers' DDPMScheduler defaults (T = 1000, linear β 1e-4..0.02), built in float32."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    alphas_cumprod = torch.cumprod(1 - betas, 0).double()
    schedule = ReferenceConfig().schedule()
    assert schedule == VPSchedule()
    torch.testing.assert_close(alphas_cumprod, schedule.alphas_cumprod, rtol=1e-6, atol=0)


def test_load_denoiser_gives_their_eps_model(fixture, tmp_path):
    """D(x, σ_t) = x − σ_t ε̂(√ᾱ_t x, t) with their network and schedule."""
    state, x, t, eps = fixture
    ckpt = _write(tmp_path / "2.pt", model=_raw(state), ema=state)
    model = load_denoiser(reference=(ckpt, CONFIG))
    assert isinstance(model.denoiser, EpsDenoiser)
    assert model.schedule == VPSchedule() and model.shape == (3, 8, 8)
    sigma, t_net = network_time(model.schedule, model.schedule.sigma(500), x)  # σ_500 (B,)
    assert torch.allclose(t_net, torch.full((4,), 500.0), rtol=0, atol=1e-4)
    net = load_reference_checkpoint(ckpt, CONFIG)
    a = (1 + sigma.square()).rsqrt().view(-1, 1, 1, 1)  # √ᾱ_500
    with torch.no_grad():
        want = x - sigma.view(-1, 1, 1, 1) * net(a * x, t_net)
        torch.testing.assert_close(model.denoiser(x, model.schedule.sigma(500)), want,
                                   rtol=0, atol=TOL)
    sample = ReferenceConfig.from_mapping(dict(CONFIG, prediction_type="sample"))
    _one_line_error("prediction_type 'sample'", load_denoiser, reference=(ckpt, sample))
    _one_line_error("carries its own schedule", load_denoiser, reference=(ckpt, CONFIG),
                    schedule="vp")


def test_cli_generate_from_their_checkpoint(fixture, tmp_path):
    state = fixture[0]
    ckpt = _write(tmp_path / "2.pt", model=_raw(state), ema=state)
    yaml_path = _their_yaml(tmp_path / "their.yaml")
    out = tmp_path / "gen"
    result = CliRunner().invoke(cli, ["generate", "--reference-checkpoint", str(ckpt),
                                      "--config", str(yaml_path), "--n", "3", "--steps", "4",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    samples = np.load(out / "samples.npz", allow_pickle=False)["samples"]
    assert samples.shape == (3, 3, 8, 8) and np.isfinite(samples).all()
    result = CliRunner().invoke(cli, ["generate", "--config", str(yaml_path), "--exact",
                                      str(tmp_path / "x.npz"), "--n", "1", "--out",
                                      str(tmp_path / "g2")])
    assert result.exit_code != 0 and "--config" in result.output


def _their_args(**train):
    return argparse.Namespace(model=ModelOptions(), train=TrainOptions(**train))


def test_prediction_type_and_beta_schedule_come_from_their_args(fixture, tmp_path):
    """A config of model keys only (or a YAML without train:) takes args.train's keys; a
    config that states other ones is refused."""
    state = fixture[0]
    ckpt = _write(tmp_path / "2.pt", ema=state, args=_their_args(prediction_type="sample"))
    no_train = tmp_path / "model_only.yaml"
    no_train.write_text(yaml.safe_dump({"model": dict(CONFIG, dim_mults="1,1")}))
    for config in (CONFIG, no_train, ReferenceConfig.from_mapping(CONFIG)):
        assert load_reference(ckpt, config).config.prediction_type == "sample"
    _one_line_error("prediction_type 'sample'", load_denoiser, reference=(ckpt, CONFIG))
    _one_line_error("disagrees .* on prediction_type 'epsilon' \\(checkpoint: 'sample'\\)",
                    load_reference, ckpt, _their_yaml(tmp_path / "their.yaml"))
    _one_line_error("on prediction_type 'epsilon'", load_reference, ckpt,
                    dict(CONFIG, prediction_type="epsilon"))
    other = _write(tmp_path / "3.pt", ema=state, args=_their_args(beta_schedule="cosine"))
    _one_line_error("on beta_schedule 'linear'", load_reference, other,
                    _their_yaml(tmp_path / "their.yaml"))
    assert load_reference(other, CONFIG).config.beta_schedule == "cosine"


def _with_data_pkl(path, data: bytes):
    """A torch zip checkpoint whose pickle is ``data``: files torch.save cannot write."""
    import zipfile
    torch.save({}, path)
    with zipfile.ZipFile(path) as z:
        items = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, content in items.items():
            z.writestr(name, data if name.endswith("data.pkl") else content)
    return path


def test_corrupt_or_forbidden_pickles_and_old_torch(fixture, tmp_path, monkeypatch):
    """UserError with torch's reason, never its advice to set weights_only=False."""
    bad_build = _with_data_pkl(tmp_path / "a.pt", b"\x80\x02ctheirs\nC\n)\x81K\x05b.")
    _one_line_error("not a readable torch checkpoint", load_reference, bad_build, CONFIG)
    blocked = _with_data_pkl(tmp_path / "b.pt", b"\x80\x02cos\nsystem\n.")
    message = _one_line_error("Trying to load unsupported GLOBAL os.system", load_reference,
                              blocked, CONFIG)
    assert "False" not in message and "http" not in message
    ckpt = _write(tmp_path / "c.pt", ema=fixture[0])
    monkeypatch.delattr(torch.serialization, "safe_globals")
    _one_line_error("needs torch >= 2.6", load_reference, ckpt, CONFIG)
