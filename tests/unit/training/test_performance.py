"""Memory and speed options: they change cost, not what is trained (or only as far as stated)."""

import copy
import time
from dataclasses import replace

import pytest
import torch
from helpers.models import CFGS, Batches, base_model, inputs

from pemma.config import TrainConfig, resolve
from pemma.methods import build_method
from pemma.models.backbones import BACKBONES
from pemma.models.networks import set_activation_checkpointing
from pemma.training.loop import cast_frozen, castable_frozen, train


def _grads_and_saved(model, cfg, recompute: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Trainable gradients of one CT+PET forward / backward, and how many tensors autograd kept."""
    model = copy.deepcopy(model).train()
    set_activation_checkpointing(model, recompute)
    saved = []
    ct, pet = inputs("ctpet", cfg.model.roi)
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = model(ct, pet).square().mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return {n: g.clone() for n, g in grads.items() if g is not None}, sum(saved)


@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize("name", ["pemma-lora", "full-finetune"])
def test_activation_checkpointing_keeps_the_gradients_and_saves_fewer_activations(name, backbone):
    cfg = CFGS[backbone]
    model = build_method(name, cfg, base_model(backbone)).model
    assert set_activation_checkpointing(model, True) > 0
    plain, kept_plain = _grads_and_saved(model, cfg, recompute=False)
    recomputed, kept_recomputed = _grads_and_saved(model, cfg, recompute=True)
    assert plain and plain.keys() == recomputed.keys()
    for n in plain:
        torch.testing.assert_close(recomputed[n], plain[n], rtol=1e-5, atol=1e-7, msg=n)
    assert kept_recomputed < kept_plain  # the blocks keep only their inputs; the decoder is unchanged


@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize("name", ["pemma-lora", "early-fusion"])
def test_channels_last_convolutions_give_the_same_outputs_and_gradients(name, backbone):
    from dataclasses import replace

    from pemma.models.networks import set_memory_format

    cfg = CFGS[backbone]
    ncdhw = replace(cfg, model=replace(cfg.model, channels_last=False))
    torch.manual_seed(0)
    fast = build_method(name, cfg, base_model(backbone)).model  # the default: channels-last
    slow = copy.deepcopy(fast)
    assert set_memory_format(slow, False) > 0 and set_memory_format(slow, False) == 0
    convs = [p for p in fast.parameters() if p.dim() == 5]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    assert all(p.is_contiguous() for p in build_method(name, ncdhw, base_model(backbone)).model.parameters())
    out = {}
    for label, model in (("fast", fast), ("slow", slow)):
        torch.manual_seed(1)
        model.train()
        logits = model(*inputs("ctpet", cfg.model.roi))
        logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[label] = logits.detach(), grads
    torch.testing.assert_close(out["fast"][0], out["slow"][0], rtol=1e-4, atol=1e-5)
    assert out["fast"][1].keys() == out["slow"][1].keys() and out["fast"][1]
    for n, g in out["slow"][1].items():
        torch.testing.assert_close(out["fast"][1][n], g, rtol=1e-3, atol=1e-5, msg=n)


def test_activation_checkpointing_is_not_part_of_a_units_identity():
    plain = resolve({"profile": "ci"})
    recomputed = resolve({"profile": "ci"}, {"train": {"activation_checkpointing": True}})
    assert plain.identity() == recomputed.identity()
    bf16 = resolve({"profile": "ci"}, {"train": {"frozen_bf16": True}})
    assert bf16.identity()["train.frozen_bf16"] is True


@pytest.mark.parametrize("name", ["pemma-lora", "pemma-dora"])
def test_frozen_bf16_stores_the_frozen_base_in_bf16_while_training_and_trains_the_rest_in_fp32(name):
    cfg = CFGS["unetr"]
    model = build_method(name, cfg, base_model("unetr")).model
    castable = {id(p) for p in castable_frozen(model)}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) in castable}
    frozen_values = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert sum(v.numel() for v in frozen.values()) > 0.99 * frozen_values  # all but the norms
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    seen = []

    def on_step(step, loss):
        seen.append({p.dtype for n, p in model.named_parameters() if n in frozen})
        assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}

    budget = TrainConfig(steps=2, batch_size=1, lr=1e-2, warmup_steps=0, frozen_bf16=True)
    stats = train(
        model,
        Batches(),
        budget,
        subsets=("ctpet", "pet"),
        probabilities=(0.5, 0.5),
        seed=0,
        device=torch.device("cpu"),
        on_step=on_step,
    )
    assert seen == [{torch.bfloat16}, {torch.bfloat16}]
    assert torch.isfinite(torch.tensor(stats.final_loss))
    after = dict(model.named_parameters())
    for n, value in frozen.items():  # back in fp32, holding the values trained with
        assert after[n].dtype == torch.float32
        torch.testing.assert_close(after[n].detach(), value.to(torch.bfloat16).float(), rtol=0, atol=0)
    assert any(not torch.equal(after[n].detach(), v) for n, v in trainable.items())


def test_cast_frozen_leaves_trainable_parameters_and_counts_what_it_cast():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[:2].requires_grad_(False)
    assert cast_frozen(model, torch.bfloat16) == 20  # the frozen linear layer; the norm stays fp32
    assert model[0].weight.dtype == torch.bfloat16 and model[2].weight.dtype == torch.float32
    assert model[1].weight.dtype == torch.float32
    assert cast_frozen(model, torch.bfloat16) == 0


@pytest.mark.slow
def test_every_unit_logs_system_metrics_over_time_and_their_summaries(tmp_path, tiny_cohort, monkeypatch):
    from helpers.cli import ci_run

    from pemma.tracking import Tracker

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    result = ci_run(tmp_path, "--methods", "pemma-lora", data=tiny_cohort)
    assert result.exit_code == 0, result.output
    tracker = Tracker(tmp_path)
    runs = tracker.runs("smoke")
    assert len(runs) == 1
    run_id = runs["run_id"].iloc[0]
    history = tracker.client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2 and [m.step for m in history] == list(range(len(history)))
    memory = [
        m.value for m in tracker.client.get_metric_history(run_id, "system/system_memory_usage_megabytes")
    ]
    assert runs["metrics.system_memory_peak_mb"].iloc[0] == max(memory)
    cpu = [m.value for m in history]
    assert runs["metrics.system_cpu_utilization_pct"].iloc[0] == pytest.approx(sum(cpu) / len(cpu))
    assert "metrics.system_gpu_utilization_pct" not in runs  # no GPU here: no GPU figure, no column
    # Where the unit's time went: every phase of a segmentation unit, adding up to its wall time.
    phases = {c.removeprefix("metrics.time/"): runs[c].iloc[0] for c in runs if c.startswith("metrics.time/")}
    expected = {"data", "ct_base", "build", "train", "evaluate", "save", "tracking"}
    assert set(phases) == {f"{p}_s" for p in expected}
    assert all(v >= 0 for v in phases.values()) and phases["train_s"] > 0 and phases["evaluate_s"] > 0
    assert sum(phases.values()) == pytest.approx(runs["metrics.unit_seconds"].iloc[0])
    assert "where the time went" in result.output and "data check" in result.output


def test_time_spent_sums_phases_over_units_in_order():
    from pemma.orchestration.runner import UnitOutcome, time_spent

    outcomes = [
        UnitOutcome("a", "FINISHED", metrics={"time/train_s": 2.0, "time/data_s": 1.0, "dice": 0.5}),
        UnitOutcome("b", "FINISHED", metrics={"time/train_s": 3.0, "time/evaluate_s": 0.5}),
    ]
    spent = time_spent(outcomes, 4.0)
    assert spent == [("data check", 4.0), ("data", 1.0), ("train", 5.0), ("evaluate", 0.5)]
    assert time_spent([]) == []


def _bench(tmp_path, *args):
    from typer.testing import CliRunner

    from pemma.cli import app

    result = CliRunner().invoke(app, ["bench", *args, "--profile", "ci", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    return result


def _bench_metrics(tmp_path, name: str, detail: bool = False) -> dict[str, float]:
    """The bench run's metrics; its artifacts are the table (and, with `detail`, the measurements
    behind it)."""
    from pemma.tracking import Tracker

    tracker = Tracker(tmp_path)
    runs = tracker.client.search_runs(
        [tracker.experiment_id("bench")], filter_string=f"tags.bench = '{name}'", max_results=5
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    artifacts = [a.path for a in tracker.client.list_artifacts(runs[0].info.run_id, "bench")]
    expected = [f"bench/{name}.csv"] + ([f"bench/{name}-detail.csv"] if detail else [])
    assert sorted(artifacts) == sorted(expected)
    return runs[0].data.metrics


@pytest.mark.slow
def test_bench_overhead_and_public_reference_log_their_ratios(tmp_path, tiny_cohort):
    out = _bench(tmp_path, "overhead", "--steps", "3", "--rounds", "2", "--data", str(tiny_cohort)).output
    assert "per-step overhead" in out
    metrics = _bench_metrics(tmp_path, "overhead", detail=True)
    row = "pemma-lora/unetr/fp32"
    # ci profile: no warm-up steps; steps 1..3 of each round are paired (step 0's start is unseen)
    assert metrics[f"{row}/steps"] == 3
    assert metrics[f"{row}/pairs"] == 6 and metrics[f"{row}/rounds"] == 2
    bare, ours = (metrics[f"{row}/{side} ms/step"] for side in ("bare", "harness"))
    assert bare > 0 and ours > 0
    # equal pair counts: the ratio of sums is the ratio of means
    assert metrics[f"{row}/per-step overhead _"] == pytest.approx(100 * (ours / bare - 1))
    low, high = metrics[f"{row}/95_ CI low _"], metrics[f"{row}/95_ CI high _"]
    assert low <= metrics[f"{row}/per-step overhead _"] <= high
    assert f"{row}/whole-call overhead _" in metrics and f"{row}/fixed s" in metrics
    assert 0 <= metrics[f"{row}/data wait share"] < 1

    _bench(
        tmp_path,
        "throughput",
        "--reference",
        "public",
        "--steps",
        "2",
        "--rounds",
        "1",
        "--data",
        str(tiny_cohort),
    )
    metrics = _bench_metrics(tmp_path, "throughput-public")
    public = metrics["public PEMMA code/fp32/manual/NCDHW/MetaTensor/preprocessed every step/samples/s"]
    harness = "pemma-bench/fp32/SDPA/channels-last/plain/cached"
    ours = metrics[f"{harness}/samples/s"]
    assert metrics[f"{harness}/speed-up"] == pytest.approx(ours / public)


class _SlowVolumes(torch.utils.data.Dataset):
    """Random crops of `shape` that take `delay` seconds each to read."""

    def __init__(self, delay: float, shape: tuple[int, int, int]) -> None:
        from pemma.bench.measures import RandomVolumes

        self.volumes, self.delay = RandomVolumes(2, shape), delay

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict:
        time.sleep(self.delay)
        return self.volumes[i]


def test_bench_overhead_pairs_charge_the_harness_its_data_time_and_not_the_bare_step():
    """A data path that sleeps 300 ms a crop shows up as the harness steps' excess over the bare steps
    they are paired with, not in the bare steps timed inside its callback."""
    from pemma.bench.performance import overhead

    cfg = resolve({"profile": "ci", "backbone": "unetr", "method": "pemma-lora"})
    result = overhead(cfg, _SlowVolumes(0.3, cfg.model.roi), torch.device("cpu"), steps=3, rounds=1)
    table = result.iloc[0]
    assert table["pairs"] == 3  # steps 1..3: the ci profile warms up for none, step 0's start is unseen
    excess = table["excess ms/step"]
    assert excess == pytest.approx(table["harness ms/step"] - table["bare ms/step"])
    slept = 300 * cfg.train.batch_size
    # the two steps' own computing differs by a few tens of ms from pair to pair on a busy machine
    assert slept - 60 <= excess <= slept + 60, table.to_dict()  # (+ a bare step: ~ +100)
    assert table["data wait share"] > 0.5  # a ci step computes for 80-200 ms on 2 CPU cores
    pairs = result.attrs["detail"]  # the pairs behind the figures
    assert pairs["step"].tolist() == [1, 2, 3] and (pairs["harness ms"] - pairs["bare ms"] > 240).all()
    # --steps counts the paired steps after the warm-up, whatever the warm-up (the GPU check asks for
    # 20 steps at the paper profile, which warms up for 20)
    warm = replace(cfg, train=replace(cfg.train, warmup_steps=2))
    after = overhead(warm, _SlowVolumes(0.0, cfg.model.roi), torch.device("cpu"), steps=1, rounds=1)
    assert after.iloc[0]["pairs"] == 1 and after.attrs["detail"]["step"].tolist() == [2]
    with pytest.raises(ValueError, match="--steps must be at least 1, got 0"):
        overhead(cfg, _SlowVolumes(0.0, cfg.model.roi), torch.device("cpu"), steps=0, rounds=1)


def test_bench_layout_logs_both_layouts_step_times_per_method(tmp_path):
    out = _bench(tmp_path, "layout", "--steps", "1", "--rounds", "1", "--methods", "pemma-lora,ef").output
    assert "convolution layout" in out
    metrics = _bench_metrics(tmp_path, "layout")
    for method in ("pemma-lora", "early-fusion"):
        ncdhw, fast = metrics[f"{method}/NCDHW ms/step"], metrics[f"{method}/channels-last ms/step"]
        assert ncdhw > 0 and fast > 0 and metrics[f"{method}/speed-up"] == pytest.approx(ncdhw / fast)


class _Counting:
    """A stream of 0, 1, 2, ... that fails at `fail_at`; `closed` once closed."""

    def __init__(self, fail_at: int) -> None:
        self.next, self.fail_at, self.closed = 0, fail_at, False

    def __next__(self) -> int:
        if self.next == self.fail_at:
            raise OSError("worker died")
        self.next += 1
        return self.next - 1

    def close(self) -> None:
        self.closed = True


def test_the_modelled_pin_memory_thread_keeps_the_order_hands_on_errors_and_stops():
    from pemma.bench.datapath import _Received

    stream = _Counting(fail_at=5)
    received = _Received(stream, depth=2)
    assert [next(received) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(OSError, match="worker died"):
        next(received)
    received.close()
    assert stream.closed and not received.thread.is_alive()
    # closed while the thread waits on a full queue: it stops all the same
    stream = _Counting(fail_at=10**9)
    received = _Received(stream, depth=1)
    assert next(received) == 0
    received.close()
    assert stream.closed and not received.thread.is_alive()


def test_bench_data_logs_the_cache_speed_up_and_the_data_wait(tmp_path, tiny_cohort):
    out = _bench(tmp_path, "data", "--cache", "--steps", "2", "--data", str(tiny_cohort)).output
    assert "preprocessing cache" in out
    logged = _bench_metrics(tmp_path, "data")
    assert {k.split("/")[0] for k in logged} == {"pemma-lora"}  # one row, labelled by its method
    metrics = {k.removeprefix("pemma-lora/"): v for k, v in logged.items()}
    cold, warm = metrics["epoch 1 s _cold cache_"], metrics["epoch 2 s _warm cache_"]
    assert cold > 0 and warm > 0 and metrics["speed-up"] == pytest.approx(cold / warm)
    assert 0 <= metrics["data wait share of a step"] <= 1 and metrics["cases"] > 0
    assert not list(tmp_path.glob("tmp*"))  # the cold cache was a temporary folder, gone


@pytest.mark.slow
def test_bench_memory_reports_every_option_against_plain_full_finetuning(tmp_path):
    _bench(tmp_path, "memory", "--steps", "1", "--methods", "pemma-lora,full-finetune")
    metrics = _bench_metrics(tmp_path, "memory")
    assert metrics["full-finetune/plain/memory vs full-finetune"] == 1.0
    for method in ("pemma-lora", "full-finetune"):
        for option in ("plain", "activation checkpointing", "frozen bf16", "both"):
            assert metrics[f"{method}/{option}/peak MB"] > 0
    # frozen bf16 halves the frozen weights: most of PEMMA-LoRA's (its PET pathway trains, a larger
    # share at ci sizes than at paper sizes); full fine-tuning freezes none
    lora = metrics["pemma-lora/frozen bf16/weights MB"] / metrics["pemma-lora/plain/weights MB"]
    assert 0.5 < lora < 0.75
    assert metrics["full-finetune/frozen bf16/weights MB"] == metrics["full-finetune/plain/weights MB"]


def test_bench_refuses_an_unknown_memory_option(tmp_path):
    from typer.testing import CliRunner

    from pemma.cli import app

    result = CliRunner().invoke(
        app, ["bench", "memory", "--options", "plain,bf16", "--results", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--options: unknown bf16" in result.output


@pytest.mark.slow
def test_bench_compile_reports_compile_time_speed_up_and_the_output_difference(tmp_path):
    _bench(tmp_path, "compile", "--steps", "2")
    metrics = _bench_metrics(tmp_path, "compile")
    row = "pemma-lora/unetr/fp32"
    assert metrics[f"{row}/speed-up"] == pytest.approx(
        metrics[f"{row}/eager ms/step"] / metrics[f"{row}/compiled ms/step"]
    )
    assert metrics[f"{row}/unit steps"] == 2  # the ci profile's budget, against which it must pay off
    # same weights, same crop: compiled and eager logits agree to float rounding
    assert metrics[f"{row}/max _logit diff_"] <= 1e-3 * max(metrics[f"{row}/logit scale"], 1.0)
