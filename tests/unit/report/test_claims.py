"""The claims machinery on fixture runs whose verdicts are known: one supported, one contradicted, one
inconclusive, and claims whose units were never run."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.runs import FakeRuns
from typer.testing import CliRunner

from pemma.cli import app
from pemma.report import stats
from pemma.report.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_RUN,
    SUPPORTED,
    ClaimsPlan,
    Runs,
    decide,
    load_plan,
    verdict_table,
)
from pemma.report.sources import Sources
from pemma.tracking import Tracker

PATIENTS = [f"P{i}" for i in range(12)]
rng = np.random.default_rng(7)
TRUTH = rng.integers(200, 400, size=(len(PATIENTS), 2)).astype(float)
BASE = np.round(0.7 * TRUTH)  # early fusion overlaps 70% of the truth, predicts the truth's size
SIGNS = np.array([[1, 1], [-1, -1]] * (len(PATIENTS) // 2))
NOISE = np.round(0.15 * SIGNS * TRUTH)  # pemma-lora: +-15% of the truth, half the patients each way


def _intersection(method: str) -> np.ndarray:
    return {
        "early-fusion": BASE,
        "pemma-lora": np.clip(BASE + NOISE, 0, TRUTH),  # no clear difference to early fusion
        "pemma-dora": np.clip(BASE + NOISE + 0.15 * TRUTH, 0, TRUTH),  # clearly above pemma-lora
        "early-fusion-lora": np.clip(BASE + NOISE + 0.25 * TRUTH, 0, TRUTH),  # clearly above pemma-lora
    }[method]


def _log(runs: FakeRuns, method, seed):
    inter = _intersection(method)
    rows = [
        {
            "kind": "segmentation",
            "patient_id": pid,
            "subset": "ctpet",
            "class": klass,
            "grid": "original",
            "split": "test",
            "intersection_voxels": inter[i, k],
            "prediction_voxels": TRUTH[i, k],
            "truth_voxels": TRUTH[i, k],
            "dice": inter[i, k] / TRUTH[i, k],
        }
        for i, pid in enumerate(PATIENTS)
        for k, klass in enumerate(("gtvp", "gtvn"))
    ]
    metrics = {"params_trainable_pct_of_reference": 8.0 if method.startswith("pemma") else 100.0}
    runs.add("main", method, seed, metrics, patients=rows, key=f"main__{method}__unetr__s{seed}__fixture")


@pytest.fixture(autouse=True)
def counted_share(monkeypatch):
    """Claim 1b counts parameters at the paper profile's sizes (30 s to build): 8% here, unless a test
    asks for the count itself."""
    from pemma.report.claims import verdicts as claims

    monkeypatch.setattr(claims, "trainable_share", lambda profile, backbone, overrides=(): 8.0)


@pytest.fixture
def claims_setup(tmp_path):
    results = tmp_path / "results"
    runs = FakeRuns(results)
    for method in ("early-fusion", "pemma-lora", "pemma-dora", "early-fusion-lora"):
        for seed in (0, 1):
            _log(runs, method, seed)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "title: fixture claims\nprofile: smoke\nseeds: [0, 1]\nbackbone: unetr\n"
        "runs:\n  - {suite: main, methods: [early-fusion, pemma-lora, pemma-dora, early-fusion-lora]}\n"
        "  - {suite: continual, methods: [pemma-lora, early-fusion]}\n"
        "  - {suite: prognosis, methods: [ct-only, pemma-lora]}\n"
    )
    return runs.tracker, results, plan


def test_verdicts_follow_where_the_interval_lies():
    def about_the_method(*values):
        return stats.Interval(*values, scope=stats.METHOD, seeds=3)

    assert decide(about_the_method(0.1, 0.05, 0.2), 0.0, above=True) == SUPPORTED
    assert decide(about_the_method(-0.1, -0.2, -0.05), 0.0, above=True) == CONTRADICTED
    assert decide(about_the_method(0.0, -0.1, 0.1), 0.0, above=True) == INCONCLUSIVE
    assert decide(about_the_method(0.3, 0.2, 0.4), 0.5, above=False) == SUPPORTED
    assert decide(about_the_method(0.3, np.nan, np.nan), 0.5, above=False) == INCONCLUSIVE
    # one seed's interval holds its network fixed: it decides nothing about the method
    network = stats.Interval(0.1, 0.05, 0.2, scope=stats.NETWORK, seeds=1)
    assert decide(network, 0.0, above=True) == INCONCLUSIVE


def test_fixture_claims_get_their_known_verdicts(claims_setup):
    tracker, results, plan = claims_setup
    table = verdict_table(load_plan(plan), Sources(tracker, results)).set_index("claim")
    verdict = {claim.split(" ")[0]: v for claim, v in table["verdict"].items()}
    assert verdict["1."] == INCONCLUSIVE, table.loc[table.index[0], "effect"]  # ±15% either way, 12 patients
    assert verdict["1b."] == SUPPORTED  # 8% of early fusion's parameters
    assert verdict["5."] == CONTRADICTED  # early-fusion-lora is clearly better than pemma-lora
    assert verdict["6."] == SUPPORTED  # pemma-dora is clearly better than pemma-lora
    assert verdict["3."] == verdict["3b."] == NOT_RUN  # no continual runs
    assert set(table.loc[[c for c in table.index if c.startswith("4.")], "verdict"]) == {NOT_RUN}
    six = table.loc[[c for c in table.index if c.startswith("6.")][0]]
    assert six["basis"] == "2 seeds, 12 test patients" and six["effect"].startswith("Δ Dice +0.1")
    # both seeds tested the same 12 patients and gave the same counts: the between-seed spread is 0 and
    # the shared patients' covariance is the whole interval (t with 11 degrees of freedom)
    assert "t over seeds" in six["test"]
    # one seed left out leaves one seed, which says nothing about the method: every definite verdict
    # but the exact count is fragile at two seeds
    assert six["stability"].startswith("fragile (without seed 0: inconclusive; without seed 1: inconclusive")
    assert table.loc[[c for c in table.index if c.startswith("1b.")][0], "stability"] == "exact"
    assert table.loc[table.index[0], "stability"].startswith("robust")  # inconclusive either way


def test_cli_claims_writes_the_verdict_table(claims_setup):
    tracker, results, plan = claims_setup
    out = CliRunner().invoke(app, ["claims", str(plan), "--results", str(results)])
    assert out.exit_code == 0, out.output
    text = (results / "claims" / "plan.md").read_text()
    assert "| **supported** |" in text and "| **contradicted** |" in text and "| **inconclusive** |" in text
    assert "Verdicts: 2 supported, 1 contradicted, 1 inconclusive" in text
    assert "| stability |" in text and "**fragile (without seed 0" in text


def test_cli_claims_seeds_replace_the_plans(claims_setup):
    tracker, results, plan = claims_setup
    out = CliRunner().invoke(app, ["claims", str(plan), "--results", str(results), "--seeds", "0-1"])
    assert out.exit_code == 0, out.output
    assert "seeds 0, 1." in (results / "claims" / "plan.md").read_text()
    out = CliRunner().invoke(app, ["claims", str(plan), "--results", str(results), "--seeds", "0,x"])
    assert out.exit_code == 2 and "expected integers or ranges" in out.output
    out = CliRunner().invoke(app, ["claims", str(plan), "--results", str(results), "--seeds", "0-2,2"])
    assert out.exit_code == 2 and "a seed is named twice" in out.output


def test_a_drop_of_every_patient_in_every_seed_is_contradicted_not_left_open(monkeypatch):
    """Early fusion on CT alone: no overlap for any patient of any seed. No resample can move that, so
    the row says so and the verdict is what the data say."""
    import pandas as pd

    from pemma.report.claims import verdicts as claims

    rows = []
    for seed in (0, 1, 2):
        for i, pid in enumerate(PATIENTS):
            for subset in ("ctpet", "ct"):
                for k, klass in enumerate(("gtvp", "gtvn")):
                    inter = BASE[i, k] if subset == "ctpet" else 0.0
                    rows.append(
                        {
                            "seed": seed,
                            "patient_id": pid,
                            "subset": subset,
                            "class": klass,
                            "intersection_voxels": inter,
                            "prediction_voxels": TRUTH[i, k],
                            "truth_voxels": TRUTH[i, k],
                            "dice": inter / TRUTH[i, k],
                        }
                    )
    frame = pd.DataFrame(rows)
    cohort = claims.Cohort(
        {
            f"early-fusion/{s}": stats.Counts.from_rows(frame[frame["subset"] == s], PATIENTS)
            for s in ("ctpet", "ct")
        },
        [0, 1, 2],
    )
    monkeypatch.setattr(claims, "select", lambda plan, sources, suite: pd.DataFrame({"x": [1]}))
    monkeypatch.setattr(
        claims, "_cohort", lambda sources, suite, runs, pairs: cohort if pairs[1][1] == "ct" else None
    )
    plan = ClaimsPlan("t", "smoke", (0, 1, 2), "unetr", (), (Runs("main", ("early-fusion",)),))
    ct = [r for r in claims.claim_no_collapse(plan, None) if "CT alone" in r.claim][0]
    assert ct.verdict == CONTRADICTED and ct.effect.startswith("drop 100% for every patient, every seed")


def test_claim_1b_counts_parameters_at_the_named_profiles_sizes(monkeypatch):
    from pemma.bench.measures import parameter_table
    from pemma.config import resolve
    from pemma.report.claims import verdicts as claims

    monkeypatch.undo()  # the real count
    share = claims.trainable_share("ci", "unetr")
    table = parameter_table(resolve({"profile": "ci", "backbone": "unetr"}), ["pemma-lora", "early-fusion"])
    assert share == pytest.approx(table.set_index("method").loc["pemma-lora", "trainable % of early-fusion"])
    assert 0 < share < 100


def test_a_plan_with_a_typo_is_refused(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("title: x\nmagrin: 0.02\n")
    out = CliRunner().invoke(app, ["claims", str(plan), "--results", str(tmp_path / "r")])
    assert out.exit_code == 2 and "did you mean 'margin'" in out.output


def test_the_continual_claims_read_the_r_cells_of_each_seed(monkeypatch):
    import pandas as pd

    from pemma.report.claims import verdicts as claims

    runs = pd.DataFrame(
        {
            "tags.method": ["pemma-lora", "early-fusion"] * 3,
            "params.seed": ["0", "0", "1", "1", "2", "2"],
            "metrics.cl/pet/R/0/MDA": [0.60, 0.70, 0.50, 0.60, 0.55, 0.65],
            "metrics.cl/pet/R/1/MDA": [0.50, 0.30, 0.45, 0.20, 0.50, 0.25],
        }
    )
    monkeypatch.setattr(claims, "select", lambda plan, sources, suite: runs)
    plan = ClaimsPlan("t", "smoke", (0, 1, 2), "unetr", (), ())
    kept, versus = claims.claim_continual(plan, None)
    assert kept.verdict == SUPPORTED and kept.basis.startswith("3 seeds")  # kept 83%, 90%, 91%
    assert versus.verdict == SUPPORTED  # PEMMA's PET Dice after the stage is about twice early fusion's
    assert versus.effect.startswith("Δ Dice +0.233 [")
    assert "(+93% of early fusion's mean 0.250)" in versus.effect
    # early fusion's PET Dice of 0 after the stage (a seed where it collapsed) keeps that seed in
    runs.loc[5, "metrics.cl/pet/R/1/MDA"] = 0.0
    _, versus = claims.claim_continual(plan, None)
    assert versus.basis == "3 seeds" and versus.effect.startswith("Δ Dice +0.317 [")


@pytest.mark.slow
def test_claims_run_runs_the_plan_in_one_batch_and_judges(tiny_cohort, tmp_path):
    """`claims --run` at the ci profile: every suite's units run (the continual unit loads the main
    unit's adaptation instead of training it again), then the verdicts are judged from them."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "title: ci claims\nprofile: ci\nseeds: [0]\nbackbone: unetr\n"
        f"set: [data.root={tiny_cohort}, data.split_follows_seed=true]\n"
        "runs:\n  - {suite: main, methods: [pemma-lora]}\n"
        "  - {suite: continual, methods: [pemma-lora], set: [continual.inputs=ct, 'continual.order=[HGJ]']}\n"
    )
    results = tmp_path / "results"
    out = CliRunner().invoke(app, ["claims", str(plan), "--run", "--results", str(results)])
    assert out.exit_code == 0, out.output
    assert "claims plan: 2 units, 2 run now, 0 failed" in out.output
    assert "loaded, not trained" in out.output
    tracker = Tracker(results)
    continual = tracker.runs("continual").iloc[0]
    assert continual["tags.adaptation_reused"].startswith("pemma-lora__unetr__s0__")
    assert 0 <= continual["metrics.cl/pet/R/1/MDA"] <= 1
    table = (results / "claims" / "plan.md").read_text()
    assert "| 3. After a CT-only stage" in table
    again = CliRunner().invoke(app, ["claims", str(plan), "--run", "--results", str(results)])
    assert again.exit_code == 0 and "2 units, 0 run now" in again.output


def test_claims_dry_run_lists_units_and_counts_their_cost(tiny_cohort, tmp_path):
    """--dry-run runs nothing: the plan's units, its CT bases, the training samples counted from the
    configs (ci: 2 steps x batch 1 per adaptation, continual + 1 stage x 2 steps, 2 pretraining
    samples per base), hours at the rates file's rates for the profile, none for the ci profile."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "title: ci claims\nprofile: ci\nseeds: [0, 1]\nbackbone: unetr\n"
        f"set: [data.root={tiny_cohort}, data.split_follows_seed=true]\n"
        "runs:\n  - {suite: main, methods: [pemma-lora, early-fusion]}\n"
        "  - {suite: continual, methods: [pemma-lora], set: [continual.inputs=ct, 'continual.order=[HGJ]']}\n"
    )
    results = tmp_path / "results"
    out = CliRunner().invoke(app, ["claims", str(plan), "--dry-run", "--results", str(results)])
    assert out.exit_code == 0, out.output
    assert out.output.count("to run  ") == 6 and "finished" not in out.output.replace("finished or", "")
    # 4 main units x 2 samples + 2 continual units x 2 (their stage 0 is the main units' adaptation,
    # loaded) + 2 bases x 2 = 16
    assert "6 units (6 to run), 2 CT bases (4 pretraining samples" in out.output
    assert "16 training samples in all" in out.output
    assert "no measured rate for profile ci" in out.output
    assert not (results / "main").exists()  # nothing ran, no data was written for a unit


def test_the_paper_plan_is_budgeted_at_a_measured_gpu_rate(tmp_path):
    from pemma.report.claims.cost import load_rates

    out = CliRunner().invoke(
        app, ["claims", "reports/claims/pemma-paper.yaml", "--dry-run", "--results", str(tmp_path / "r")]
    )
    assert out.exit_code == 0, out.output
    # 45 units and the robustness question's 10, which load the main units' adaptations: no training
    assert "55 units (55 to run), 5 CT bases" in out.output
    assert "978,000 training samples in all" in out.output  # continual stage 0 counted once, in main
    paper = [r for r in load_rates() if r.profile == "paper" and r.backbone == "unetr"]
    assert paper and all(f"at {r.samples_per_s:g} samples/s on {r.device}" in out.output for r in paper)


def test_the_shift_question_compares_the_drops_of_early_fusion_and_pemma_lora(tmp_path):
    """Question 1 reads the robustness suite's rows at CT+PET and at pet-shift-8mm: early fusion keeps
    30% of the truth under the shift, PEMMA-LoRA 60%; PEMMA-LoRA loses less, clearly. The plan's
    `eval.conditions` override does not have to match what a run logged when it started (a finished
    unit may have scored more conditions since)."""
    from pemma.report.claims import verdicts as claims

    runs = FakeRuns(tmp_path / "results")
    kept = {"early-fusion": 0.3, "pemma-lora": 0.6}
    for method, share in kept.items():
        for seed in (0, 1, 2):
            inter = _intersection(method)
            rows = [
                {
                    "kind": "segmentation",
                    "patient_id": pid,
                    "subset": "ctpet",
                    "condition": condition,
                    "magnitude": magnitude,
                    "class": klass,
                    "grid": "original",
                    "split": "test",
                    "intersection_voxels": overlap,
                    "prediction_voxels": TRUTH[i, k],
                    "truth_voxels": TRUTH[i, k],
                    "dice": overlap / TRUTH[i, k],
                }
                for i, pid in enumerate(PATIENTS)
                for k, klass in enumerate(("gtvp", "gtvn"))
                for condition, magnitude, overlap in (
                    ("ctpet", None, inter[i, k]),
                    ("pet-shift", 8.0, np.round(share * TRUTH[i, k] * (1 + 0.02 * seed))),
                )
            ]
            runs.add(
                "robustness", method, seed, patients=rows, params={"eval.conditions": "('pet-shift=0',)"}
            )
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "title: q\nseeds: [0, 1, 2]\nruns:\n"
        "  - suite: robustness\n    methods: [early-fusion, pemma-lora]\n"
        "    set: ['eval.conditions=[pet-shift=8]']\n"
    )
    rows = claims.question_shift(load_plan(plan), Sources(runs.tracker, tmp_path / "results"))
    (row,) = rows
    assert row.claim.startswith("Q1. Open question") and row.verdict == SUPPORTED, row
    assert row.basis == "3 seeds, 12 test patients"
    # hand count: drop = 1 - kept share x truth / early fusion's or PEMMA-LoRA's CT+PET overlap
    lora = _intersection("pemma-lora").sum()
    ef = BASE.sum()
    expected = np.mean(
        [
            (1 - 0.3 * (1 + 0.02 * s) * TRUTH.sum() / ef) - (1 - 0.6 * (1 + 0.02 * s) * TRUTH.sum() / lora)
            for s in range(3)
        ]
    )
    assert row.effect.startswith(f"Δ drop {100 * expected:+.1f} pts"), (row.effect, expected)
