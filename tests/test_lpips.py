"""LPIPS as an exact embedding: ‖φ(x) − φ(y)‖² equals the per-pair LPIPS computation."""

import numpy as np
import pytest
import torch

import memgen.metrics.features as features
from memgen.metrics.features import FeatureMap
from memgen.metrics.lpips import BACKBONES, embed_batched, load_lpips, lpips_pairwise, random_lpips
from memgen.metrics.nearest import find_neighbours


def _images(n, channels, size, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=gen, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("net,size", [("alex", 16), ("alex", 32), ("alex", 45),
                                      ("vgg", 28), ("vgg", 32)])
@pytest.mark.parametrize("channels", [1, 3])
def test_embedding_equals_pairwise_lpips(net, size, channels):
    model = random_lpips(net, seed=1, dtype=torch.float64)
    x, y = _images(3, channels, size, 2), _images(3, channels, size, 3)
    pairwise = lpips_pairwise(model, x, y)
    embedded = (model.embed(x) - model.embed(y)).square().sum(dim=1)
    assert (pairwise > 0).all()
    torch.testing.assert_close(embedded, pairwise, rtol=1e-10, atol=0)


def test_reference_convention_is_the_lpips_convention_on_rescaled_inputs():
    lp = random_lpips("alex", seed=4, dtype=torch.float64)
    ref = random_lpips("alex", seed=4, convention="reference", dtype=torch.float64)
    x = _images(2, 3, 32, 5)
    torch.testing.assert_close(ref.embed(x), lp.embed((x + 1) / 2))
    assert not torch.allclose(ref.embed(x), lp.embed(x))


def test_knn_on_embeddings_equals_brute_force_over_pairwise_lpips(monkeypatch):
    model = random_lpips("alex", seed=6, dtype=torch.float64)
    monkeypatch.setitem(features.FEATURE_MAPS, "lpips-test", lambda: FeatureMap(
        "lpips-test", embed=lambda x: embed_batched(model, x.double(), batch_size=7), power=2))
    queries, train = _images(5, 1, 28, 7), _images(30, 1, 28, 8)
    near = find_neighbours(queries.numpy(), train.numpy(), queries.numpy()[::-1].copy(), k=3,
                           metric="lpips-test")
    brute = torch.stack([lpips_pairwise(model, q.expand(len(train), -1, -1, -1), train)
                         for q in queries]).numpy()  # (5, 30)
    order = np.argsort(brute, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(near.train_idx, order)
    np.testing.assert_allclose(near.train_dist, np.take_along_axis(brute, order, 1), rtol=1e-9)


def test_weights_load_from_torchvision_and_lpips_files(tmp_path):
    model = random_lpips("alex", seed=9)
    state = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(2, 2)  # ignored, as torchvision files have it
    torch.save(state, tmp_path / BACKBONES["alex"].weights_file)
    torch.save({f"lin{i}.model.1.weight": h.view(1, -1, 1, 1)
                for i, h in enumerate(model.heads())}, tmp_path / BACKBONES["alex"].heads_file)
    loaded = load_lpips("alex", weights_dir=tmp_path)
    x = _images(2, 3, 32, 10).float()
    torch.testing.assert_close(loaded.embed(x), model.embed(x))


def test_missing_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"alexnet-owt-7be5be79\.pth and alex\.pth.*"
                                         + str(tmp_path)):
        load_lpips("alex", weights_dir=tmp_path)
    monkeypatch.setenv("MEMGEN_LPIPS_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="vgg16-397923af.pth"):
        features.get_feature_map("lpips-vgg")


def test_bad_inputs_are_refused():
    model = random_lpips("alex")
    with pytest.raises(ValueError, match="1 or 3"):
        model.embed(torch.zeros(2, 2, 32, 32))
    with pytest.raises(ValueError, match="unknown LPIPS backbone"):
        load_lpips("resnet")


def test_every_feature_map_is_offered_by_the_cli_and_configs():
    from memgen.cli.measure import classify
    from memgen.experiments.config import CHOICES

    offered = next(p.type.choices for p in classify.params if p.name == "metric")
    assert tuple(offered) == tuple(features.FEATURE_MAPS) == tuple(CHOICES["measure.metric"])
