"""Tests for memgen.data: file formats, loaders, toy sets and nested splits."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from memgen.data import (DATASETS, TOY_SETS, DataNotFoundError, circle_pool, gaussian_mixture,
                         heldout_indices, load_cifar10, load_dataset, load_digits, load_idx_images,
                         load_image_folder, load_toy, nested_indices, read_cifar_batch, read_idx,
                         resolve_root, safe_unpickle, spiral, train_heldout, two_moons)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when the name ends in .gz)."""
    code = IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(raw)
    return path


def write_mnist(folder: Path, n: int = 5, seed: int = 0, gz: bool = True) -> np.ndarray:
    """A tiny MNIST-format train split in ``folder``; returns the uint8 images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", np.arange(n, dtype=np.uint8) % 10)
    return images


# --- IDX -------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, gz, dtype):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), array)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_idx_bytes_are_big_endian(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 0x0B, 1]) + struct.pack(">i", 2) + struct.pack(">2h", 1, -2))
    np.testing.assert_array_equal(read_idx(path), [1, -2])


@pytest.mark.parametrize("raw, match", [
    (b"\x01\x00\x08\x01" + struct.pack(">i", 1) + b"\x00", "magic"),
    (b"\x00\x00", "magic"),
    (b"\x00\x00\x07\x01" + struct.pack(">i", 1) + b"\x00", "type code"),
    (b"\x00\x00\x08\x02" + struct.pack(">i", 2), "header"),
    (b"\x00\x00\x08\x01" + struct.pack(">i", 3) + b"\x00", "needs 3"),
])
def test_idx_bad_file_raises(tmp_path, raw, match):
    path = tmp_path / "bad.idx"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=match):
        read_idx(path)


def test_idx_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.idx"
    with pytest.raises(ValueError, match=str(missing)):
        read_idx(missing)
    with pytest.raises(FileNotFoundError):
        read_idx(missing)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_images_explicit_root(tmp_path, gz):
    raw = write_mnist(tmp_path, gz=gz)
    images, labels = load_idx_images("mnist", root=tmp_path)
    assert images.shape == (5, 1, 28, 28) and images.dtype == np.float32
    np.testing.assert_array_equal(images[:, 0], raw / np.float32(127.5) - 1)
    assert images[0, 0, 0, 0] == -1.0 and images[0, 0, 0, 1] == 1.0
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("sub", [True, False])
def test_memgen_data_env_override(tmp_path, monkeypatch, sub):
    raw = write_mnist(tmp_path / "mnist" if sub else tmp_path, seed=7)
    monkeypatch.setenv("MEMGEN_DATA", str(tmp_path))
    assert resolve_root("mnist") == (tmp_path / "mnist" if sub else tmp_path)
    images = load_dataset("mnist")
    np.testing.assert_array_equal(images[:, 0], raw / np.float32(127.5) - 1)


def test_explicit_root_beats_env(tmp_path, monkeypatch):
    write_mnist(tmp_path / "env" / "mnist", n=3)
    write_mnist(tmp_path / "explicit", n=4)
    monkeypatch.setenv("MEMGEN_DATA", str(tmp_path / "env"))
    assert load_dataset("mnist", root=tmp_path / "explicit").shape[0] == 4
    assert load_dataset("mnist").shape[0] == 3


def test_missing_files_error_message(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMGEN_DATA", str(tmp_path))
    with pytest.raises(ValueError) as info:
        load_idx_images("mnist", split="test")
    message = str(info.value)
    assert "t10k-images-idx3-ubyte" in message and str(tmp_path) in message
    assert "MEMGEN_DATA" in message and "\n" not in message
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_idx_images("fashion-mnist", root=tmp_path)


def test_missing_label_file_message(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        load_idx_images("mnist", root=tmp_path)


def test_idx_bad_arguments():
    with pytest.raises(ValueError, match="unknown IDX"):
        load_idx_images("kmnist")
    with pytest.raises(ValueError, match="split"):
        load_idx_images("mnist", split="valid")


@pytest.mark.skipif(not FASHION_DIR.is_dir(),
                    reason=f"needs Fashion-MNIST's IDX files in {FASHION_DIR} (make data: "
                           "apt-get install dataset-fashion-mnist); the only test that reads "
                           "them")
def test_fashion_mnist_real_files(monkeypatch):
    monkeypatch.delenv("MEMGEN_DATA", raising=False)
    images, labels = load_idx_images("fashion-mnist")
    assert images.shape == (60000, 1, 28, 28) and images.dtype == np.float32
    assert images.min() == -1.0 and images.max() == 1.0
    assert labels.shape == (60000,) and labels.dtype == np.int64
    assert sorted(np.unique(labels).tolist()) == list(range(10))
    assert load_dataset("fmnist", split="test").shape == (10000, 1, 28, 28)


# --- CIFAR-10 --------------------------------------------------------------------------

def write_cifar_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """A synthetic CIFAR-10 python batch (protocol-2 pickle), as the real files are."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"synthetic", b"data": data, b"labels": labels}, f, protocol=2)
    return data, labels


def test_cifar_batch_round_trip(tmp_path):
    data, labels = write_cifar_batch(tmp_path / "data_batch_1", n=4, seed=0)
    images, out_labels = read_cifar_batch(tmp_path / "data_batch_1")
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.float32
    np.testing.assert_array_equal(images, data.reshape(4, 3, 32, 32) / np.float32(127.5) - 1)
    assert out_labels.dtype == np.int64 and out_labels.tolist() == labels


def python2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """The opcodes Python 2 + numpy 1 wrote for the real batches (str keys, numpy.core)."""
    def string(b: bytes) -> bytes:  # BINSTRING: a Python 2 str
        return b"T" + struct.pack("<i", len(b)) + b
    n, d = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b")
        + b"\x87R(K\x01J" + struct.pack("<i", n) + b"J" + struct.pack("<i", d) + b"\x86"
        + b"cnumpy\ndtype\n" + string(b"u1") + b"\x89\x88\x87R(K\x03" + string(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + string(data.tobytes()) + b"tb"
    )
    label_ops = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_ops + b"u."


def test_cifar_python2_style_batch(tmp_path):
    data = np.random.default_rng(2).integers(0, 256, size=(2, 3072), dtype=np.uint8)
    (tmp_path / "test_batch").write_bytes(python2_cifar_pickle(data, [3, 7]))
    images, labels = load_cifar10("test", root=tmp_path)
    np.testing.assert_array_equal(images, data.reshape(2, 3, 32, 32) / np.float32(127.5) - 1)
    assert labels.tolist() == [3, 7]


@pytest.mark.parametrize("nested", [True, False])
def test_load_cifar10_splits(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", n=2, seed=i)
    test_data, _ = write_cifar_batch(folder / "test_batch", n=3, seed=9)
    images, labels = load_cifar10("train", root=tmp_path)
    assert images.shape == (10, 3, 32, 32) and labels.shape == (10,)
    test_images = load_dataset("cifar10", split="test", root=tmp_path)
    expected = test_data.reshape(3, 3, 32, 32) / np.float32(127.5) - 1
    np.testing.assert_array_equal(test_images, expected)


def test_cifar_missing_batch_names_file(tmp_path):
    write_cifar_batch(tmp_path / "data_batch_1", n=1, seed=0)
    with pytest.raises(ValueError, match="data_batch_2"):
        load_cifar10(root=tmp_path)


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": _Exploit(target), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match="refused.*system"):
        read_cifar_batch(path)
    assert not target.exists()


@pytest.mark.parametrize("payload", [
    (eval, ("1+1",)),
    (Path, ("/etc/passwd",)),
])
def test_other_globals_refused(payload):
    class Evil:
        def __reduce__(self):
            return payload
    with pytest.raises(ValueError, match="refused"):
        safe_unpickle(pickle.dumps(Evil(), protocol=2))


def test_codecs_encode_only_latin1():
    raw = pickle.dumps(b"abc", protocol=2).replace(b"latin1", b"rot_13")
    with pytest.raises(ValueError, match="refused"):
        safe_unpickle(raw)


def test_cifar_batch_wrong_content_refused(tmp_path):
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match="uint8"):
        read_cifar_batch(path)
    path.write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(ValueError, match="unreadable"):
        read_cifar_batch(path)


# --- image folder ----------------------------------------------------------------------

def bordered_image(width: int, height: int, centre=(0, 255, 0)) -> Image.Image:
    """Solid ``centre`` colour with red / blue bands on the sides the centre crop removes."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :] = centre
    if width > height:
        band = (width - height) // 2
        pixels[:, :band] = (255, 0, 0)
        pixels[:, width - band:] = (0, 0, 255)
    else:
        band = (height - width) // 2
        pixels[:band] = (255, 0, 0)
        pixels[height - band:] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_image_folder_crop_and_resize(tmp_path):
    bordered_image(96, 64).save(tmp_path / "wide.png")
    bordered_image(40, 70, centre=(255, 255, 255)).save(tmp_path / "tall.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_image_folder(tmp_path, size=32)
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.float32
    np.testing.assert_array_equal(images[0], np.ones((3, 32, 32), np.float32))  # tall.bmp
    expected_green = np.array([-1, 1, -1], np.float32)[:, None, None]
    np.testing.assert_array_equal(images[1], np.broadcast_to(expected_green, (3, 32, 32)))


def test_image_folder_order_recursion_and_limit(tmp_path):
    (tmp_path / "a").mkdir()
    colours = {"a/z.jpg": (255, 255, 255), "b.PNG": (0, 0, 0), "c.webp": (255, 255, 255)}
    for name, colour in colours.items():
        Image.new("RGB", (20, 20), colour).save(tmp_path / name, quality=100)
    images = load_image_folder(tmp_path, size=8)
    means = images.mean(axis=(1, 2, 3))
    assert images.shape == (3, 3, 8, 8)
    assert means[0] > 0.9 and means[1] == -1.0 and means[2] > 0.9
    assert load_image_folder(tmp_path, size=8, limit=2).shape[0] == 2
    assert load_dataset("folder", root=tmp_path).shape == (3, 3, 64, 64)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        load_image_folder(tmp_path / "absent")
    with pytest.raises(ValueError, match="needs root"):
        load_dataset("folder")


# --- digits ----------------------------------------------------------------------------

def test_digits():
    pytest.importorskip("sklearn")
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    assert images.min() == -1.0 and images.max() == 1.0
    assert labels.dtype == np.int64 and sorted(set(labels.tolist())) == list(range(10))


# --- toy sets --------------------------------------------------------------------------

def test_circle_pool_on_circle_and_uniform():
    points = circle_pool()
    assert points.shape == (60000, 2) and points.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-6)
    angles = np.arctan2(points[:, 1].astype(np.float64), points[:, 0])
    assert stats.kstest(angles, "uniform", args=(-np.pi, 2 * np.pi)).pvalue > 1e-3
    np.testing.assert_array_equal(points, load_dataset("circle"))
    assert not np.array_equal(circle_pool(100, seed=1), circle_pool(100, seed=2))


@pytest.mark.parametrize("name", sorted(TOY_SETS))
def test_toy_sets_shape_and_determinism(name):
    a, b = load_toy(name, 500, seed=4), load_toy(name, 500, seed=4)
    assert a.shape == (500, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_toy_geometry():
    moons = two_moons(2000, seed=0).astype(np.float64)
    on_upper = np.isclose(np.linalg.norm(moons, axis=1), 1, atol=1e-6) & (moons[:, 1] >= -1e-6)
    on_lower = np.isclose(np.linalg.norm(moons - [1.0, 0.5], axis=1), 1, atol=1e-6) \
        & (moons[:, 1] <= 0.5 + 1e-6)
    assert np.all(on_upper | on_lower) and on_upper.mean() > 0.4 and on_lower.mean() > 0.4
    mix = gaussian_mixture(4000, seed=0, centers=4, radius=2.0, std=0.0)
    centres = {tuple(np.round(p, 5) + 0.0) for p in mix.astype(np.float64)}
    assert centres == {(2.0, 0.0), (0.0, 2.0), (-2.0, 0.0), (0.0, -2.0)}
    assert np.all(np.linalg.norm(spiral(1000, seed=0), axis=1) <= 1 + 1e-6)


def test_toy_errors():
    with pytest.raises(ValueError, match="unknown toy"):
        load_toy("swiss", 10, 0)
    with pytest.raises(ValueError, match="n must be"):
        circle_pool(0)


# --- nested splits ---------------------------------------------------------------------

def test_nested_indices_are_nested_and_deterministic():
    n = 1000
    for K in (1, 10, 100, 500):
        small, big = nested_indices(n, K), nested_indices(n, 2 * K)
        assert small.dtype == np.int64 and len(set(small.tolist())) == K
        assert set(small.tolist()) <= set(big.tolist())
        np.testing.assert_array_equal(small, big[:K])
        np.testing.assert_array_equal(small, nested_indices(n, K))
    perm = np.random.default_rng(3407).permutation(n)
    np.testing.assert_array_equal(nested_indices(n, 7), perm[:7])
    assert not np.array_equal(nested_indices(n, 50, seed=1), nested_indices(n, 50))


def test_heldout_is_complement():
    n, K = 300, 64
    train, held = nested_indices(n, K), heldout_indices(n, K)
    assert set(train.tolist()).isdisjoint(held.tolist())
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(n))
    np.testing.assert_array_equal(held, np.random.default_rng(3407).permutation(n)[K:])
    assert heldout_indices(n, n).shape == (0,)


def test_train_heldout():
    data = np.arange(50)[:, None] * np.ones((1, 3))
    split = train_heldout(data, 20)
    train, held = split
    assert train.shape == (20, 3) and held.shape == (30, 3)
    np.testing.assert_array_equal(split.train[:, 0], nested_indices(50, 20))
    np.testing.assert_array_equal(held[:, 0], heldout_indices(50, 20))


@pytest.mark.parametrize("K", [0, -1, 11])
def test_nested_indices_out_of_range(K):
    with pytest.raises(ValueError, match=rf"K={K}.*n_total=10"):
        nested_indices(10, K)
    with pytest.raises(ValueError, match=rf"K={K}"):
        heldout_indices(10, K)


# --- registry --------------------------------------------------------------------------

def test_registry_unknown_name_lists_known():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    for name in ("mnist", "fashion-mnist", "fmnist", "cifar10", "digits", "circle", "folder"):
        assert name in DATASETS and name in str(info.value)
