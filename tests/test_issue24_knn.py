"""Issue #24, item 4: the kNN engine on its own floor (memgen.neighbours).

Its public interface (``memgen.neighbours.__all__``) is what the rest of the package, the
benchmarks and the examples import: no submodule, no private name; inside the package no
module imports another's private name; no module-level state that code reassigns (the
bfloat16 screen is an argument, ``bf16_screen``); and every choice of screen gives float64
brute force's neighbours, computed here with numpy.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import memgen
import memgen.neighbours as neighbours
from memgen.errors import UserError
from memgen.neighbours import bf16 as bf16_module, exact as exact_module

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "memgen"
PACKAGE = "memgen.neighbours"
IMMUTABLE = (int, float, complex, str, bytes, bool, tuple, frozenset, type(None),
             types.ModuleType, re.Pattern)
REGISTRIES = {"KNN_BACKENDS"}  # name → engine tables, extended by registering, never rebound


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _public_import_violations(source: str, importer: str) -> list[str]:
    """Imports of memgen.neighbours by a module outside it that reach past its __init__:
    a submodule, or a name not in ``memgen.neighbours.__all__``."""
    wrong = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            wrong += [f"{importer}:{node.lineno} imports {a.name}" for a in node.names
                      if a.name.startswith(PACKAGE + ".")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith(PACKAGE + "."):
                wrong.append(f"{importer}:{node.lineno} imports from {node.module}")
            elif node.module == PACKAGE:
                wrong += [f"{importer}:{node.lineno} imports {PACKAGE}.{a.name}"
                          for a in node.names if a.name not in neighbours.__all__]
    return wrong


def _private_import_violations(source: str, importer: str, source_prefix: str) -> list[str]:
    """Private names (``_name``, not dunders) imported from modules under source_prefix."""
    wrong = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(source_prefix):
            wrong += [f"{importer}:{node.lineno} imports {node.module}.{a.name}"
                      for a in node.names if a.name.startswith("_")
                      and not a.name.endswith("__")]
    return wrong


def _outside_files():
    """(module name, path) of every Python file outside the package that may import it."""
    for path in sorted(SRC.rglob("*.py")):
        if not _module_name(path).startswith(PACKAGE):
            yield _module_name(path), path
    for folder in ("bench", "examples"):
        for path in sorted((ROOT / folder).glob("*.py")):
            yield f"{folder}/{path.name}", path


def _package_files():
    return [(_module_name(p), p) for p in sorted((SRC / "neighbours").glob("*.py"))]


def test_the_checks_catch_what_they_forbid():
    """The AST checks below flag a submodule import, a name outside __all__ and a private
    name (so their empty results mean something)."""
    bad = ("from memgen.neighbours.exact import knn_search\n"
           "from memgen.neighbours import _certified_pass, knn_search\n"
           "import memgen.neighbours.bf16\n")
    assert len(_public_import_violations(bad, "x")) == 3
    private = "from memgen.neighbours.exact import _validate, __doc__\n"
    assert len(_private_import_violations(private, "x", "memgen")) == 1


def test_the_rest_of_memgen_bench_and_examples_use_only_the_public_interface():
    found = [name for name, _ in _outside_files()]
    users = {"memgen.metrics.nearest", "memgen.metrics.quality", "memgen.metrics.classify",
             "memgen.memory.energy", "memgen.memory.attractors", "memgen.api",
             "bench/knn.py", "bench/stream.py"}
    assert users <= set(found)
    wrong = [w for name, path in _outside_files()
             for w in _public_import_violations(path.read_text(), name)]
    assert wrong == []
    importers = {name for name, path in _outside_files() if PACKAGE in path.read_text()}
    assert users <= importers  # the floors above do import the engine, from its front door


def test_no_private_name_crosses_a_module():
    """Nothing imports a private name of the package; its modules import none of memgen's."""
    wrong = [w for name, path in _outside_files()
             for w in _private_import_violations(path.read_text(), name, PACKAGE)]
    wrong += [w for name, path in _package_files()
              for w in _private_import_violations(path.read_text(), name, "memgen")]
    assert wrong == []


def test_every_public_name_is_there_and_the_engine_owns_the_knn_names():
    assert all(hasattr(neighbours, name) for name in neighbours.__all__)
    assert {"knn", "knn_search", "KnnResult", "stream_knn", "ShardSet", "faiss_knn_search",
            "pairwise_sq_dist"} <= set(neighbours.__all__)
    metrics = importlib.import_module("memgen.metrics")
    assert not hasattr(metrics, "knn") and not hasattr(metrics, "knn_search")
    # the package is not memgen.knn: importing it leaves the public function in place
    assert memgen.knn is importlib.import_module("memgen.api").knn


def test_no_module_state_that_code_reassigns():
    """No ``global`` statement in the package; every module-level name holds an immutable
    value, a function, class or module (or a registry); no module of memgen assigns an
    attribute of one of the package's modules; BF16_SCREEN is gone."""
    for name, path in _package_files():
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)], name
        module = importlib.import_module(name)
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name) and leaf.id not in REGISTRIES \
                            and not leaf.id.startswith("__"):
                        value = getattr(module, leaf.id)
                        assert isinstance(value, IMMUTABLE), f"{name}.{leaf.id}: {value!r}"
    modules = {m.name for m in pkgutil.iter_modules(neighbours.__path__)}
    assert "BF16_SCREEN" not in {n for m in modules
                                 for n in vars(importlib.import_module(f"{PACKAGE}.{m}"))}
    wrong = []
    for name, path in _outside_files():
        if not name.startswith("memgen"):
            continue
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and n.module == PACKAGE for a in n.names if a.name in modules}
        aliases.add("neighbours")
        for node in ast.walk(tree):
            for target in getattr(node, "targets", [getattr(node, "target", None)]):
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id in aliases:
                    wrong.append(f"{name}:{node.lineno}")
    assert wrong == []


# ---------------------------------------------------------------------------- the screen argument


def _numpy_brute_force(q: np.ndarray, r: np.ndarray, k: int, exclude_self: bool = False):
    """Float64 distances by direct differences, ordered by (distance, index). numpy sums
    in its own order: its distances agree with the engine's to the last bit or two (and
    exactly on integer data)."""
    d2 = ((q.astype(np.float64)[:, None, :] - r.astype(np.float64)[None]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    columns = np.broadcast_to(np.arange(r.shape[0]), d2.shape)
    order = np.lexsort((columns, d2), axis=1)[:, :k]  # by d2, then by index
    return np.sqrt(np.take_along_axis(d2, order, 1)), order


def _sets(kind: str, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "grid":  # exact ties everywhere
        r, q = rng.integers(-2, 3, (900, 40)), rng.integers(-2, 3, (70, 40))
    elif kind == "offset":  # far from the origin, where float32 cancels
        r, q = 2.0**16 + rng.normal(size=(900, 300)), 2.0**16 + rng.normal(size=(70, 300))
    else:
        r, q = rng.normal(size=(900, 300)), rng.normal(size=(70, 300))
    return q.astype(np.float32), r.astype(np.float32)


@pytest.mark.parametrize("kind", ["normal", "grid", "offset"])
@pytest.mark.parametrize("bf16_screen", [None, False, True])
def test_every_screen_choice_gives_brute_force_neighbours(kind, bf16_screen, monkeypatch):
    q, r = _sets(kind, seed=len(kind))
    k = 5
    passes = []
    real = exact_module.bf16_pass
    monkeypatch.setattr(exact_module, "bf16_pass",
                        lambda *args: passes.append(1) or real(*args))
    res = neighbours.knn_search(torch.from_numpy(q), torch.from_numpy(r), k,
                                bf16_screen=bf16_screen)
    own = neighbours.knn_search(torch.from_numpy(r), torch.from_numpy(r), k, exclude_self=True,
                                bf16_screen=bf16_screen)
    dist, idx = _numpy_brute_force(q, r, k)
    np.testing.assert_array_equal(res.idx.numpy(), idx)
    np.testing.assert_allclose(res.dist.numpy(), dist, rtol=1e-14, atol=0)
    dist, idx = _numpy_brute_force(r, r, k, exclude_self=True)
    np.testing.assert_array_equal(own.idx.numpy(), idx)
    np.testing.assert_allclose(own.dist.numpy(), dist, rtol=1e-14, atol=0)
    forced = bf16_screen if bf16_screen is not None else bf16_module.use_bf16(
        len(q), len(r), q.shape[1], torch.device("cpu"), k)
    assert bool(passes) == forced  # the argument chose the screen that ran


def test_the_choice_is_the_argument_alone():
    """Forced on or off, whatever the CPU; the automatic choice never on a small problem."""
    cpu = torch.device("cpu")
    assert bf16_module.use_bf16(100, 1000, 16, cpu, 5, forced=True)
    assert not bf16_module.use_bf16(10_000, 60_000, 784, cpu, 5, forced=False)
    assert not bf16_module.use_bf16(100, 1000, 16, cpu, 5)
    assert not bf16_module.use_bf16(100, 1000, 16, cpu, 40, forced=True)  # k past its 32


@pytest.mark.parametrize("bf16_screen", [False, True])
def test_a_streamed_search_takes_the_screen_argument(tmp_path, bf16_screen):
    q, r = _sets("grid", seed=3)
    for i, lo in enumerate(range(0, len(r), 400)):
        np.save(tmp_path / f"synth-{i:05d}.npy", r[lo:lo + 400])
    res = neighbours.stream_knn(torch.from_numpy(q), tmp_path, 4, chunk_rows=250,
                                bf16_screen=bf16_screen)
    dist, idx = _numpy_brute_force(q, r, 4)
    np.testing.assert_array_equal(res.idx.numpy(), idx)
    np.testing.assert_allclose(res.dist.numpy(), dist, rtol=1e-14, atol=0)
    with pytest.raises(UserError, match="builtin kNN backend"):
        neighbours.stream_knn(torch.from_numpy(q), tmp_path, 4, backend="faiss",
                              bf16_screen=bf16_screen)


def test_the_default_embedding_is_the_l2_feature_map():
    """stream_knn's default φ (the flattening named l2) embeds as metrics' l2 map does, so a
    restart state written before the split still matches its fingerprint."""
    features = importlib.import_module("memgen.metrics.features")
    x = torch.randn(3, 1, 4, 4)
    l2 = features.get_feature_map("l2")
    assert neighbours.Flatten().name == l2.name
    assert torch.equal(neighbours.Flatten().embed(x), l2.embed(x))
