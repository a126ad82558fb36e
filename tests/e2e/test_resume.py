"""Resumable units: a stopped training loop, or a unit killed with SIGKILL, continues to the same bits."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers.cli import ci_args
from monai import transforms as T
from monai.data import Dataset
from typer.testing import CliRunner

import pemma.training.loop as training
from pemma.cli import app
from pemma.config import resolve
from pemma.files import CorruptFile, load_state, save_state
from pemma.methods import build_method
from pemma.modalities import SUBSETS
from pemma.models.backbones import BACKBONES
from pemma.tracking import Tracker

pytestmark = pytest.mark.slow  # end-to-end runs and services: `pytest -m 'not slow'` skips them

CFG = resolve({"profile": "ci"})
ROI = CFG.model.roi


class Stop(Exception):
    pass


def _data() -> Dataset:
    """In-memory volumes through random crops and flips: the transforms' random streams matter."""
    g = torch.Generator().manual_seed(3)
    items = []
    for _ in range(3):
        label = torch.zeros(1, 40, 40, 40, dtype=torch.uint8)
        label[0, 10:20, 10:20, 10:20] = 1
        label[0, 24:30, 24:30, 24:30] = 2
        items.append({"ct": torch.rand(1, 40, 40, 40, generator=g), "pet": label.float(), "label": label})
    keys = ["ct", "pet", "label"]
    return Dataset(
        items,
        T.Compose(
            [T.RandSpatialCropd(keys, ROI, random_size=False), T.RandFlipd(keys, prob=0.5, spatial_axis=0)]
        ),
    )


def _train(checkpoint=None, stop_after=None, seeding="stream", workers=0):
    torch.manual_seed(0)
    base = BACKBONES.get("unetr").build(CFG.model, 1)
    built = build_method("pemma-lora", CFG, base)  # LoRA dropout draws from the global stream
    budget = CFG.train.__class__(
        steps=9,
        batch_size=2,
        lr=1e-2,
        warmup_steps=0,
        checkpoint_every=3,
        augment_seeding=seeding,
        loader_workers=workers,
    )
    seen = []

    def on_step(step, loss):
        seen.append(step)
        if step == stop_after:
            raise Stop

    stats = training.train(
        built.model,
        _data(),
        budget,
        subsets=SUBSETS,
        probabilities=(0.6, 0.2, 0.2),
        seed=0,
        device=torch.device("cpu"),
        on_step=on_step,
        checkpoint=checkpoint,
    )
    state = {n: p.detach().clone() for n, p in built.model.named_parameters() if p.requires_grad}
    return stats, state, seen


@pytest.mark.parametrize(("seeding", "workers"), [("stream", 0), ("sample", 0), ("sample", 2)])
def test_a_stopped_loop_resumes_to_the_same_weights_and_losses(tmp_path, seeding, workers):
    """Crops seeded per sample: the loop with 2 loader workers, stopped and resumed, ends with the
    weights of the loop with none that never stopped (issue 29)."""
    whole, weights, _ = _train(seeding=seeding)
    checkpoint = tmp_path / "train.pt"
    with pytest.raises(Stop):  # steps 0-4 ran; the checkpoint holds steps 0-2 (every 3)
        _train(checkpoint, stop_after=4, seeding=seeding, workers=workers)
    assert load_state(checkpoint)["step"] == 3
    resumed, resumed_weights, seen = _train(checkpoint, seeding=seeding, workers=workers)
    assert seen == list(range(3, 9)), "the resumed loop starts where the checkpoint ends"
    assert (resumed.first_loss, resumed.final_loss) == (whole.first_loss, whole.final_loss)
    assert resumed_weights.keys() == weights.keys()
    assert all(torch.equal(resumed_weights[n], weights[n]) for n in weights)
    assert load_state(checkpoint)["step"] == 9
    again, again_weights, seen = _train(checkpoint, seeding=seeding, workers=workers)  # loaded, not retrained
    assert seen == [] and all(torch.equal(again_weights[n], weights[n]) for n in weights)
    assert again.final_loss == whole.final_loss


def test_a_checkpoint_of_another_budget_is_refused_by_name(tmp_path):
    checkpoint = tmp_path / "train.pt"
    _train(checkpoint)
    state = load_state(checkpoint)
    state["identity"]["steps"] = 5
    save_state(state, checkpoint)  # a sound file (its digest recorded) of another budget
    with pytest.raises(ValueError, match=r"train\.pt: a checkpoint of another training budget"):
        _train(checkpoint)


def _cli(results, cohort, workers=0):
    budget = ("--set", "train.steps=60", "--set", "train.checkpoint_every=4")
    budget += ("--set", f"train.loader_workers={workers}")
    return ci_args(results, "--methods", "pemma-lora", *budget, data=cohort)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_unit_killed_mid_training_resumes_to_the_same_metrics(tiny_cohort, tmp_path, monkeypatch, workers):
    """With 2 loader workers, killed and resumed, a unit's metrics are those of the uninterrupted unit
    trained with none (issue 29: the same ci unit, 0 and 2 workers, the same bits)."""
    whole = CliRunner().invoke(app, _cli(tmp_path / "whole", tiny_cohort))
    assert whole.exit_code == 0, whole.output
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pemma.cli import app; app()", *_cli(killed, tiny_cohort, workers)],
        env={**os.environ, "PEMMA_DEVICE": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    step, deadline = 0, time.monotonic() + 300
    try:
        while step < 8 and proc.poll() is None and time.monotonic() < deadline:
            found = list((killed / "checkpoints").glob("smoke__*/train.pt"))
            if found:
                # caught between the checkpoint's rewrite and its digest's: look again
                with contextlib.suppress(CorruptFile, OSError, EOFError, RuntimeError):
                    step = load_state(found[0])["step"]
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 8 <= step < 60, f"the unit was not caught mid-training (checkpoint step {step})"

    resumed_from = []
    original = training.load_state

    def spy(path):
        state = original(path)
        resumed_from.append(state["step"])
        return state

    monkeypatch.setattr(training, "load_state", spy)
    rerun = CliRunner().invoke(app, _cli(killed, tiny_cohort, workers))
    assert rerun.exit_code == 0, rerun.output
    assert resumed_from and resumed_from[0] >= 8, "the rerun resumed from the killed run's checkpoint"
    assert not list((killed / "checkpoints").glob("smoke__*")), "a finished unit removes its checkpoints"
    a, b = (Tracker(r).runs("smoke").iloc[0] for r in (tmp_path / "whole", killed))
    assert a["tags.run_key"] == b["tags.run_key"]
    compared = [
        k
        for k in a.index
        if k.startswith(("metrics.dice_", "metrics.train_first_loss", "metrics.train_final_loss"))
    ]
    assert len(compared) > 6
    assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in compared), {
        k: (a[k], b[k]) for k in compared if a[k] != b[k]
    }
    assert len(Tracker(killed).runs("smoke", status="KILLED")) == 1  # the killed attempt, closed


def test_a_damaged_checkpoint_restarts_its_stage_with_a_warning(tmp_path, caplog):
    checkpoint = tmp_path / "train.pt"
    first, weights, _ = _train(checkpoint)
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 32] = bytes(32)
    checkpoint.write_bytes(bytes(data))
    again, weights_again, _ = _train(checkpoint)
    assert (
        "train.pt: its contents differ" in caplog.text and "starting this training stage over" in caplog.text
    )
    assert (again.first_loss, again.final_loss) == (first.first_loss, first.final_loss)
    assert all(torch.equal(weights[n], weights_again[n]) for n in weights), "trained again from the start"
