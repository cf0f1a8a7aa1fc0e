"""Issue #23: one input contract (``memgen.io``: ranges and dtypes refused or converted as
documented, ranges that clearly differ refused), ``train``'s size and option checks, and
classify's refusal of an evaluated set drawn from the same noise as the synthetic set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from memgen import api
from memgen.errors import UserError
from memgen.io import RANGE_TOLERANCE, check_ranges, load_samples, validate_samples
from test_cli import assert_fails, ok, run, save

MEM = 0


def images(rng, n, size=8, channels=1):
    """Images in memgen's range [-1, 1], with dark pixels (as real ones have)."""
    return rng.uniform(-1, 1, (n, channels, size, size)).astype(np.float32)


def near_copies(rng, train, rows):
    return np.clip(train[rows] + 1e-3 * rng.normal(size=train[rows].shape), -1, 1
                   ).astype(np.float32)


# ----------------------------------------------------------------------- the contract


def test_images_in_minus_one_one_and_uint8_pass_as_documented():
    rng = np.random.default_rng(0)
    x = images(rng, 4)
    np.testing.assert_array_equal(validate_samples(x), x)
    edge = x.copy()
    edge[0, 0, 0, 0] = 1 + RANGE_TOLERANCE / 2  # rounding within the stated tolerance
    assert validate_samples(edge).max() == np.float32(1 + RANGE_TOLERANCE / 2)
    u8 = rng.integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(validate_samples(u8), u8.astype(np.float32) / 127.5 - 1)


@pytest.mark.parametrize("make, found, flag", [
    (lambda x: (x + 1) / 2, "look like [0, 1]", "--input-range 0,1"),
    (lambda x: (x + 1) * 127.5, "outside [-1, 1]", "--input-range 0,255"),
    (lambda x: np.round((x + 1) * 127.5).astype(np.uint16), "uint16 images", "--input-range 0,255"),
    (lambda x: np.round((x + 1) * 127.5).astype(np.int64), "int64 images", "--input-range 0,255"),
    (lambda x: x > 0, "bool images", "--input-range 0,1"),
    (lambda x: x * 1.2, "clip them to [-1, 1]", None),
    (lambda x: x * 1000, "rescale them", "--input-range LO,HI"),
])
def test_other_image_ranges_and_dtypes_are_refused_naming_range_and_flag(make, found, flag):
    x = make(images(np.random.default_rng(1), 6))
    with pytest.raises(UserError) as err:
        validate_samples(x, "--train")
    message = str(err.value)
    assert message.startswith("--train: ") and found in message and "\n" not in message
    assert str(x.dtype) in message
    if flag:
        assert flag in message


@pytest.mark.parametrize("shape", [(5, 8, 8), (5, 1, 1, 8, 8)])
def test_neither_vectors_nor_images_are_refused(shape):
    with pytest.raises(UserError, match=r"neither vectors \(N, D\) nor images"):
        validate_samples(np.zeros(shape, np.float32), "--eval")


def test_vectors_take_any_finite_range_and_nonfinite_is_refused():
    x = np.random.default_rng(2).normal(0, 300, (10, 3)).astype(np.float32)
    np.testing.assert_array_equal(validate_samples(x), x)
    ints = np.arange(12).reshape(4, 3)
    np.testing.assert_array_equal(validate_samples(ints), ints.astype(np.float32))
    for bad in (np.nan, np.inf):
        y = images(np.random.default_rng(2), 2)
        y[1, 0, 0, 0] = bad
        with pytest.raises(UserError, match="NaN or Inf"):
            validate_samples(y, "--synth")


def test_explicit_input_range_converts_and_checks_the_values():
    rng = np.random.default_rng(3)
    v = rng.integers(0, 256, (5, 1, 4, 4))
    expected = v.astype(np.uint8).astype(np.float32) / 127.5 - 1  # uint8's conversion
    for dtype in (np.uint16, np.int64, np.float32, np.float64):
        np.testing.assert_array_equal(validate_samples(v.astype(dtype), input_range=(0, 255)),
                                      expected)
    unit = (v / 255).astype(np.float32)
    np.testing.assert_allclose(validate_samples(unit, input_range=(0, 1)), expected, atol=1e-6)
    as_is = validate_samples(unit, input_range=(-1, 1))  # "looks like [0, 1]" taken as it is
    np.testing.assert_array_equal(as_is, unit)
    mask = validate_samples(v > 127, input_range=(0, 1))
    assert set(np.unique(mask)) == {-1.0, 1.0}
    with pytest.raises(UserError, match=r"outside the input range 0,1"):
        validate_samples(v.astype(np.float32), "--train", input_range=(0, 1))


def test_sets_whose_ranges_clearly_differ_are_refused_unless_allowed():
    rng = np.random.default_rng(4)
    signed = images(rng, 20)
    with pytest.raises(UserError, match="non-negative, the other signed"):
        check_ranges(train=(signed + 1) / 2, eval=signed)
    vectors = rng.normal(size=(20, 3))
    with pytest.raises(UserError, match="20 times the magnitude"):
        check_ranges(train=vectors * 255, eval=vectors)
    check_ranges(True, train=(signed + 1) / 2, eval=signed)  # allowed
    check_ranges(train=signed, eval=images(rng, 5), synth=np.clip(signed * 0.7, -1, 1),
                 heldout=None)  # the same range: fine
    # a toy set's K = 2 points may both lie in one quadrant, its held-out points all round
    # the circle: vectors are not held to the sign test
    angle = rng.uniform(0, 2 * np.pi, 40)
    circle = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    check_ranges(train=np.array([[0.3, 0.95], [0.9, 0.4]]), heldout=circle)


# -------------------------------------------------------------------- classify (CLI)


def classify_files(tmp_path, train, eval_set, *args):
    out = tmp_path / "out"
    result = run("classify", "--train", save(tmp_path / "train.npz", train), "--eval",
                 save(tmp_path / "eval.npz", eval_set), *args, "--out", out)
    return result, out


@pytest.mark.parametrize("convert, flag", [
    (lambda x: (x + 1) / 2, "--input-range train=0,1"),
    (lambda x: (x + 1) * 127.5, "--input-range train=0,255"),
    (lambda x: np.round((x + 1) * 127.5).astype(np.uint16), "--input-range train=0,255"),
    (lambda x: np.round((x + 1) * 127.5).astype(np.int64), "--input-range train=0,255"),
    (lambda x: x > 0, "--input-range train=0,1"),
])
def test_classify_refuses_then_converts_each_training_range(tmp_path, convert, flag):
    """Refused with the flag named, nothing left behind; with the flag, the near-copies of
    training images given in [-1, 1] come out memorized."""
    rng = np.random.default_rng(5)
    train = images(rng, 12)
    raw = convert(train)
    if raw.dtype != bool:  # bool keeps only the sign: copies of the converted images
        train = validate_samples(raw, input_range=(0, 255) if "255" in flag else (0, 1))
    else:
        train = validate_samples(raw, input_range=(0, 1))
    eval_set = np.concatenate([near_copies(rng, train, [0, 1, 2, 3]), images(rng, 6)])
    result, out = classify_files(tmp_path, raw, eval_set)
    assert_fails(result, flag, out, tmp_path)
    result, out = classify_files(tmp_path, raw, eval_set, *flag.split())
    ok(result)
    labels = np.load(out / "labels.npz")["labels"]
    assert (labels[:4] == MEM).all() and (labels[4:] != MEM).all()


def test_plain_input_range_applies_to_every_set(tmp_path):
    rng = np.random.default_rng(6)
    train, eval_set = images(rng, 10), images(rng, 5)
    result, out = classify_files(tmp_path, (train + 1) * 127.5, eval_set,
                                 "--input-range", "0,255")
    assert_fails(result, "--eval: values in", out, tmp_path)  # eval is not in [0, 255]
    result, out = classify_files(tmp_path, train, eval_set, "--input-range", "heldout=0,1")
    assert_fails(result, "no --heldout given", out, tmp_path)
    result, out = classify_files(tmp_path, train, eval_set, "--input-range", "x=0,1")
    assert_fails(result, "no set 'x'", out, tmp_path)


def test_classify_refuses_a_range_mismatch_unless_allowed(tmp_path):
    rng = np.random.default_rng(7)
    train = images(rng, 10)
    unit = (train + 1) / 2  # [0, 1] declared as [-1, 1]: a mistake the flag makes explicit
    result, out = classify_files(tmp_path, unit, images(rng, 5), "--input-range",
                                 "train=-1,1")
    assert_fails(result, "--allow-range-mismatch", out, tmp_path)
    ok(classify_files(tmp_path, unit, images(rng, 5), "--input-range", "train=-1,1",
                      "--allow-range-mismatch")[0])


def test_classify_refuses_grey_images_without_a_channel_axis(tmp_path):
    rng = np.random.default_rng(8)
    result, out = classify_files(tmp_path, images(rng, 6)[:, 0], images(rng, 3)[:, 0])
    assert_fails(result, "(N, 1, H, W)", out, tmp_path)


# ------------------------------------------------------- classify: independent sets


def test_classify_refuses_synth_equal_to_eval_or_eval_a_prefix_of_synth(tmp_path):
    rng = np.random.default_rng(9)
    train, synth = images(rng, 10), images(rng, 30)
    save(tmp_path / "synth.npz", synth)
    for eval_set in (synth, synth[:8]):
        result, out = classify_files(tmp_path, train, eval_set, "--synth",
                                     tmp_path / "synth.npz")
        assert_fails(result, "must be drawn independently", out, tmp_path)
        assert "--seed depends on --name" in result.output


def test_classify_refuses_a_streamed_synth_that_holds_the_eval_rows(tmp_path):
    rng = np.random.default_rng(10)
    train, synth = images(rng, 10), images(rng, 30)
    (tmp_path / "shards").mkdir()
    for i, part in enumerate(np.array_split(synth, 3)):
        np.save(tmp_path / "shards" / f"synth-{i:05d}.npy", part)
    out = tmp_path / "out"  # refused after the search (s1 = 0), so without its progress bar
    result = run("-q", "classify", "--train", save(tmp_path / "train.npz", train), "--eval",
                 save(tmp_path / "eval.npz", synth[5:12]), "--synth", tmp_path / "shards",
                 "--out", out)
    assert_fails(result, "must be drawn independently", out, tmp_path)
    ok(classify_files(tmp_path, train, images(rng, 7), "--synth", tmp_path / "shards")[0])


def test_streamed_synth_is_held_to_the_contract(tmp_path):
    rng = np.random.default_rng(11)
    train = images(rng, 10)
    for name, shard in (("u16", np.round((images(rng, 9) + 1) * 127.5).astype(np.uint16)),
                        ("unit", (images(rng, 9) + 1) / 2)):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "synth-00000.npy", shard)
        result, out = classify_files(tmp_path, train, images(rng, 4), "--synth",
                                     tmp_path / name)
        assert_fails(result, "uint16 images" if name == "u16" else "look like [0, 1]", out,
                     tmp_path)
    result, out = classify_files(tmp_path, train, images(rng, 4), "--synth", tmp_path / "unit",
                                 "--input-range", "synth=0,1")
    assert_fails(result, "streamed --synth is read as it is", out, tmp_path)


def test_warns_where_s1_zero_exceeds_the_sets_own_repeats(tmp_path):
    """An evaluated set with repeats of its own (a model that emits an image exactly) and
    one more row shared with S′ than those repeats explain: labelled, with a warning."""
    rng = np.random.default_rng(12)
    train = images(rng, 10)
    eval_set = images(rng, 10)
    eval_set[1] = eval_set[0]  # 2 of 10 repeat each other
    synth = np.concatenate([eval_set[:3], images(rng, 30)])  # 3 of 10 have s1 = 0
    result, out = classify_files(tmp_path, train, eval_set, "--synth",
                                 save(tmp_path / "synth.npz", synth))
    ok(result)
    assert "3 of the 10 evaluated samples (30.0%) have an exact copy" in result.stderr
    warnings = json.loads((out / "summary.json").read_text())["warnings"]
    assert any("s1 = 0" in w for w in warnings)


def test_one_repeated_row_does_not_excuse_sets_drawn_from_the_same_seed(tmp_path):
    """A new user's case: one evaluated row repeated, and the other 8 rows are S′'s rows of
    the same index (the same seed): the repeat explains itself, not the 8; refused. Exact
    states that recur (fixed points reached again and again) share rows with S′ at other
    indices: accepted."""
    rng = np.random.default_rng(14)
    train, fresh = images(rng, 10), images(rng, 9)
    eval_set = np.concatenate([fresh[:1], fresh])  # rows 0, 1 repeat; rows 1..9 as in S′
    synth = np.concatenate([images(rng, 1), fresh, images(rng, 40)])
    result, out = classify_files(tmp_path, train, eval_set, "--synth",
                                 save(tmp_path / "synth.npz", synth))
    assert_fails(result, "8 of them neither training images nor repeated", out, tmp_path)
    attractors = images(rng, 3)
    recurring = np.concatenate([images(rng, 40), attractors, attractors, attractors[:1]])
    eval_set = np.concatenate([images(rng, 7), attractors, attractors[:1]])
    result, out = classify_files(tmp_path, train, eval_set, "--synth",
                                 save(tmp_path / "recurring.npz", recurring))
    ok(result)


def test_no_overlap_warning_without_synth_or_for_training_copies(tmp_path):
    rng = np.random.default_rng(13)
    train = images(rng, 10)
    eval_set = np.concatenate([images(rng, 6), train[:3]])
    eval_set[1] = eval_set[0]  # exact repeats: s1 = 0 without --synth, explained
    result, out = classify_files(tmp_path, train, eval_set)
    ok(result)
    assert "s1 = 0" not in result.output
    # exact training copies in both sets (the exact denoiser emits them): explained
    synth = np.concatenate([train[:3], images(rng, 20)])
    result, out = classify_files(tmp_path, train, np.concatenate([images(rng, 6), train[:3]]),
                                 "--synth", save(tmp_path / "synth.npz", synth))
    ok(result)
    assert "s1 = 0" not in result.output and "independently" not in result.output


# ---------------------------------------------------------------------------- train


def train_run(tmp_path, data, *args):
    out = tmp_path / "run"
    path = save(tmp_path / "t.npz", data) if data is not None else None
    return run("train", *(["--train", path] if path else []), *args, "--iterations", 1,
               "--batch-size", 4, "--out", out), out


@pytest.mark.parametrize("extra, named", [
    (["--K", 8], "--K"), (["--half", 2], "--half"), (["--half", 1], "--half"),
    (["--data", "digits", "--split-seed", 3], "--data, --split-seed"),
    (["--data-root", "."], "--data-root")])
def test_train_refuses_options_that_train_file_makes_moot(tmp_path, extra, named):
    result, out = train_run(tmp_path, images(np.random.default_rng(14), 8), "--preset",
                            "digits-8", *extra)
    assert_fails(result, f"{named}: no effect with --train", out, tmp_path)


def test_train_refuses_a_size_mismatch_naming_sizes_and_presets(tmp_path):
    rng = np.random.default_rng(15)
    result, out = train_run(tmp_path, images(rng, 8))  # default preset: fmnist-cpu-16
    assert_fails(result, "the data are 1×8×8 images but preset fmnist-cpu-16 takes "
                         "1×16×16 images (presets that fit: digits-8, digits-8-w8, "
                         "digits-8-w64; or pass --resize",
                 out, tmp_path)
    result, out = train_run(tmp_path, images(rng, 8, channels=3), "--preset", "digits-8")
    assert_fails(result, "3×8×8 images but preset digits-8 takes 1×8×8", out, tmp_path)
    assert "--resize" not in result.output  # resizing cannot change the channels
    result, out = train_run(tmp_path, rng.normal(size=(8, 2)).astype(np.float32))
    assert_fails(result, "2-dimensional vectors but preset fmnist-cpu-16 takes 1×16×16 "
                         "images (presets that fit: toy-mlp)", out, tmp_path)
    result, out = train_run(tmp_path, None, "--data", "digits", "--K", 4, "--preset",
                            "fmnist-cpu-28")
    assert_fails(result, "1×8×8 images but preset fmnist-cpu-28 takes 1×28×28", out, tmp_path)


def test_train_resizes_only_with_resize(tmp_path):
    ok(train_run(tmp_path, images(np.random.default_rng(16), 4), "--resize")[0])
    trained = load_samples(tmp_path / "run" / "train.npz")
    assert trained.shape == (4, 1, 16, 16)


def test_train_refuses_other_ranges_and_converts_with_input_range(tmp_path):
    """Refused with nothing left behind; converted with --input-range 0,255; the converted
    train.npz then finds near-copies given in [-1, 1] memorized."""
    rng = np.random.default_rng(17)
    train = images(rng, 6)
    raw = (train + 1) * 127.5
    result, out = train_run(tmp_path, raw, "--preset", "digits-8")
    assert_fails(result, "--input-range 0,255", out, tmp_path)
    result, out = train_run(tmp_path, np.round(raw).astype(np.uint16), "--preset", "digits-8")
    assert_fails(result, "uint16 images", out, tmp_path)
    result, out = train_run(tmp_path, None, "--data", "digits", "--K", 4, "--preset",
                            "digits-8", "--input-range", "0,1")
    assert_fails(result, "--input-range converts a --train FILE", out, tmp_path)
    ok(train_run(tmp_path, raw, "--preset", "digits-8", "--input-range", "0,255")[0])
    written = load_samples(out / "train.npz")
    np.testing.assert_allclose(written, train, atol=1e-5)
    eval_set = np.concatenate([near_copies(rng, train, [0, 1, 2]), images(rng, 5)])
    result = ok(run("classify", "--train", out / "train.npz", "--eval",
                    save(tmp_path / "eval.npz", eval_set), "--out", tmp_path / "c"))
    labels = np.load(tmp_path / "c" / "labels.npz")["labels"]
    assert (labels[:3] == MEM).all() and (labels[3:] != MEM).all()


def test_train_help_lists_presets_and_memgen_help_needs_no_torch():
    text = ok(run("train", "--help")).output
    for line in ("digits-8", "1×8×8 images, 701,345 parameters", "church",
                 "3×64×64 images, 61,745,283 parameters", "toy-mlp",
                 "2-dimensional vectors, 54,274 parameters"):
        assert line in text
    code = ("import sys; from memgen.cli import cli; cli.main(['--help'], "
            "standalone_mode=False); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={"PYTHONPATH": str(Path(__file__).parents[1] / "src"),
                                           "PATH": ""})
    assert done.stdout.strip().endswith("False")


# ------------------------------------------------------------------------------ API


def test_api_applies_the_contract_with_its_own_parameter_names():
    rng = np.random.default_rng(18)
    train = images(rng, 10)
    eval_set = np.concatenate([near_copies(rng, train, [0, 1]), images(rng, 4)])
    with pytest.raises(UserError, match=r"input_range=\{'train': \(0,255\)\}"):
        api.classify((train + 1) * 127.5, eval_set)
    result = api.classify((train + 1) * 127.5, eval_set, input_range={"train": (0, 255)})
    assert (result.labels[:2] == MEM).all()
    with pytest.raises(UserError, match="allow_range_mismatch=True"):
        api.classify((train + 1) / 2, eval_set, input_range={"train": (-1, 1)})
    with pytest.raises(UserError, match="must be drawn independently"):
        api.classify(train, eval_set, eval_set)


uint8_images = st.integers(2, 6).flatmap(lambda n: st.lists(
    st.integers(0, 255), min_size=n * 4, max_size=n * 4).map(
        lambda v: np.array(v, dtype=np.int64).reshape(n, 1, 2, 2)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(train=uint8_images, samples=uint8_images)
def test_labels_are_invariant_to_the_documented_conversion(train, samples):
    """For random images given in each accepted form — uint8; uint16, int64 and floats in
    [0, 255] with input_range (0, 255); floats in [0, 1] with (0, 1) — the converted sets
    and so the labels equal those of the uint8 form (2 (x − LO)/(HI − LO) − 1 reproduces
    x / 127.5 − 1 exactly)."""
    def labels(convert, input_range):
        """The labels and distances, or the refusal (degenerate sets: all the same)."""
        try:
            result = api.classify(convert(train), convert(samples), input_range=input_range,
                                  allow_range_mismatch=True)
        except UserError as err:
            return str(err), None
        return result.labels, result.neighbours.train_dist

    base, base_dist = labels(lambda v: v.astype(np.uint8), None)
    forms = [(lambda v: v.astype(np.uint16), (0, 255)), (lambda v: v, (0, 255)),
             (lambda v: v.astype(np.float32), (0, 255)),
             (lambda v: (v / 255).astype(np.float32), (0, 1))]
    for convert, input_range in forms:
        got, dist = labels(convert, input_range)
        np.testing.assert_array_equal(got, base)
        if base_dist is not None:
            np.testing.assert_allclose(dist, base_dist, rtol=1e-6)


def test_plot_neighbours_reads_the_sets_classify_converted(tmp_path):
    rng = np.random.default_rng(19)
    train = images(rng, 10)
    eval_set = np.concatenate([near_copies(rng, train, [0, 1]), images(rng, 4)])
    raw = (train + 1) * 127.5
    result, out = classify_files(tmp_path, raw, eval_set, "--input-range", "train=0,255")
    ok(result)
    args = ["plot", "neighbours", "--train", tmp_path / "train.npz", "--eval",
            tmp_path / "eval.npz", "--labels", out / "labels.npz", "--out", tmp_path / "g.png"]
    assert_fails(run(*args), "--input-range train=0,255", tmp_path / "g.png", tmp_path)
    ok(run(*args, "--input-range", "train=0,255"))
    assert (tmp_path / "g.png").stat().st_size > 0


def test_train_refuses_resize_for_vectors(tmp_path):
    data = np.random.default_rng(20).normal(size=(8, 2)).astype(np.float32)
    result, out = train_run(tmp_path, data, "--preset", "toy-mlp", "--resize")
    assert_fails(result, "--resize: preset toy-mlp takes vectors", out, tmp_path)
