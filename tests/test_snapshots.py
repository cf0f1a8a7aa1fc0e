"""The training-time axis: snapshots of one run equal separate runs, longer budgets resume."""

import json

import pytest
import torch

from memgen.diffusion.training import TrainConfig, load_checkpoint, snapshot_path, train

TWO_POINTS = torch.tensor([[1.0, 0.0], [-0.6, 0.8]])


def _config(**changes):
    base = dict(preset="toy-mlp", objective="ve_score", iterations=12, batch_size=8, lr=2e-3,
                ema_decay=0.9, seed=5, log_every=2, checkpoint_every=5)
    base.update(changes)
    return TrainConfig(**base)


def _weights(path):
    payload = load_checkpoint(path)
    return payload["step"], payload["model"], payload["ema"]


def _assert_same(a, b):
    assert a[0] == b[0]
    for x, y in zip([*a[1].values(), *a[2].values()], [*b[1].values(), *b[2].values()]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("preset, objective", [("toy-mlp", "ve_score"),
                                               ("digits-8", "vp_eps")])
def test_snapshot_after_n_steps_equals_a_separate_run_of_n_steps(tmp_path, preset, objective):
    data = TWO_POINTS if preset == "toy-mlp" else torch.rand(3, 1, 8, 8) * 2 - 1
    long = _config(preset=preset, objective=objective, snapshots=(3, 7))
    train(long, data, tmp_path / "long", progress=False)
    for n in (3, 7):
        short = _config(preset=preset, objective=objective, iterations=n)
        train(short, data, tmp_path / f"short{n}", progress=False)
        _assert_same(_weights(snapshot_path(tmp_path / "long", n)),
                     _weights(tmp_path / f"short{n}" / "checkpoint.pt"))
    _assert_same(_weights(snapshot_path(tmp_path / "long", 12)),
                 _weights(tmp_path / "long" / "checkpoint.pt"))


def _record_starts(monkeypatch) -> list[int]:
    """The step of every saved state that training resumes from."""
    from memgen.diffusion import training

    starts, original = [], training.restore
    monkeypatch.setattr(training, "restore",
                        lambda state, payload, rank=0: starts.append(payload["step"])
                        or original(state, payload, rank))
    return starts


def test_a_longer_budget_resumes_from_the_last_state_instead_of_retraining(tmp_path,
                                                                           monkeypatch):
    train(_config(iterations=6), TWO_POINTS, tmp_path / "run", progress=False)
    starts = _record_starts(monkeypatch)
    state = train(_config(iterations=12, snapshots=(6,)), TWO_POINTS, tmp_path / "run",
                  progress=False)
    assert starts == [6]
    log = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").open()]
    assert log == [2, 4, 6, 8, 10, 12]
    whole = train(_config(iterations=12), TWO_POINTS, tmp_path / "whole", progress=False)
    for a, b in zip(whole.model.state_dict().values(), state.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_new_snapshot_retrains_from_the_state_before_it_only(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(_config(snapshots=(4,)), TWO_POINTS, run, progress=False)
    starts = _record_starts(monkeypatch)
    train(_config(snapshots=(4, 9)), TWO_POINTS, run, progress=False)
    assert starts == [4]
    assert _weights(run / "checkpoint.pt")[0] == 12  # the latest state never moves back
    whole = tmp_path / "whole"
    train(_config(iterations=9), TWO_POINTS, whole, progress=False)
    _assert_same(_weights(snapshot_path(run, 9)), _weights(whole / "checkpoint.pt"))


def test_nothing_missing_reads_the_final_state_and_trains_nothing(tmp_path):
    train(_config(snapshots=(4,)), TWO_POINTS, tmp_path, progress=False)
    state = train(_config(iterations=4), TWO_POINTS, tmp_path, progress=False)
    assert state.step == 4 and _weights(tmp_path / "checkpoint.pt")[0] == 12


def test_snapshots_outside_the_budget_are_refused():
    with pytest.raises(ValueError, match="snapshots"):
        _config(snapshots=(13,))
    with pytest.raises(ValueError, match="snapshots"):
        _config(snapshots=(0,))
