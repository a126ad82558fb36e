import math

import numpy as np
import pandas as pd
import pytest

from pemma.metrics.survival import bootstrap_ci, harrell_cindex, write_task2_submission


def test_cindex_against_a_hand_count_and_the_sign_convention():
    # Four patients; (time, event): A (1, 1), B (2, 1), C (3, 0), D (4, 1).
    time = np.array([1, 2, 3, 4])
    event = np.array([1, 1, 0, 1])
    # Comparable pairs (the earlier time is an event): A-B, A-C, A-D, B-C, B-D = 5 pairs.
    perfect = np.array([4.0, 3.0, 2.0, 1.0])  # higher risk fails first
    assert harrell_cindex(time, event, perfect) == 1.0
    assert harrell_cindex(time, event, -perfect) == 0.0  # the sign is pinned: risk, not survival time
    # Swap A and B's risks: A-B discordant, the other four concordant -> 4/5.
    assert math.isclose(harrell_cindex(time, event, np.array([3.0, 4.0, 2.0, 1.0])), 4 / 5)
    # Risks A 4, B 2, C 3, D 2: A-B, A-C, A-D concordant; B-C discordant (B failed first with the lower
    # risk); B-D tied in risk, counting one half -> (3 + 0 + 0.5) / 5.
    assert math.isclose(harrell_cindex(time, event, np.array([4.0, 2.0, 3.0, 2.0])), 3.5 / 5)


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    risk = rng.normal(size=200)
    time = np.exp(-risk + rng.normal(scale=0.5, size=200))
    event = (rng.random(200) < 0.7).astype(int)
    est, low, high = bootstrap_ci(harrell_cindex, time, event, risk, n=200)
    assert low < est < high and est > 0.7


def test_task2_submission_format(tmp_path):
    path = write_task2_submission(["CHUM-001", "MDA-002"], np.array([0.3, 1.2]), tmp_path / "sub.csv")
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["PatientID", "Prediction"] and frame["Prediction"].tolist() == [0.3, 1.2]
    with pytest.raises(ValueError, match="duplicate PatientID"):
        write_task2_submission(["A-1", "A-1"], np.array([0.1, 0.2]), tmp_path / "dup.csv")


def test_uno_equals_harrell_without_censoring_and_scores_follow_the_risk_sign():
    from pemma.metrics.survival import survival_scores, uno_cindex

    rng = np.random.default_rng(1)
    train_time = rng.exponential(500, 300) + 1
    train_event = np.ones(300)  # no censoring: every IPCW weight is 1
    time = rng.exponential(500, 80) + 1
    event = np.ones(80)
    risk = -time + rng.normal(scale=200, size=80)
    tau = np.quantile(train_time, 0.9)
    inside = time < tau  # Uno truncates at tau: pairs whose earlier time lies beyond it do not count
    pairs = [(i, j) for i in range(80) for j in range(80) if time[i] < time[j] and inside[i]]
    by_hand = np.mean([1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0 for i, j in pairs])
    assert math.isclose(uno_cindex(train_time, train_event, time, event, risk), by_hand, rel_tol=1e-9)

    fit = (train_time, train_event, -train_time / 500)  # log-hazards of a sensible scale
    scores = survival_scores(fit, (time, event, -time / 500), n_boot=20)
    assert scores["cindex_harrell"] == 1.0 and scores["cindex_uno"] == 1.0
    assert all(scores[k] == 1.0 for k in scores if k.startswith("auc_"))
    reversed_ = survival_scores(fit, (time, event, time / 500), n_boot=20)
    assert reversed_["cindex_harrell"] == 0.0
    assert scores["ibs"] < reversed_["ibs"], "a better ranking must give a lower integrated Brier score"


def test_harrell_matches_scikit_survival_on_censored_data():
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(2)
    risk = rng.normal(size=150)
    time = np.round(rng.exponential(300 / np.exp(risk)), 0) + 1  # rounded: tied times occur
    event = rng.random(150) < 0.6
    theirs = concordance_index_censored(event, time, risk)[0]
    assert math.isclose(harrell_cindex(time, event, risk), theirs, abs_tol=1e-9)


def test_missing_clinical_values_use_the_learned_missing_token_not_zero():
    import torch

    from pemma.models.prognosis import EHRTokens, TableEncoding

    table = pd.DataFrame({"Age": [50.0, 70.0, np.nan], "Gender": ["M", "F", None]})
    encoding = TableEncoding.fit(table, ("Age", "Gender"))
    values, present = encoding.transform(table)
    assert present.tolist() == [[True, True], [True, True], [False, False]]
    tokens = EHRTokens(2, 4)
    with torch.no_grad():
        out = tokens(values, present)
        torch.testing.assert_close(out[2], tokens.missing)
        # A missing age is not an age at the mean (a standardised 0): the two tokens differ.
        at_mean = tokens(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool))
        assert not torch.allclose(at_mean[0], out[2])
    with pytest.raises(ValueError, match="Gender"):
        TableEncoding.fit(pd.DataFrame({"Gender": ["M", "unknown"]}), ("Gender",))


@pytest.mark.parametrize("dataset", ["lung", "rossi"])
def test_tabular_path_matches_a_lifelines_cox_model_on_real_data(dataset):
    """EHR tokens + survival head vs lifelines' Cox PH on the same split of a bundled real dataset.

    NCCTG lung (lifelines) has missing values in 4 columns; Rossi recidivism has none.
    """
    from lifelines.datasets import load_lung, load_rossi

    from pemma.config import PrognosisConfig
    from pemma.tasks.prognosis.cox import cox_baseline, fit_tabular, predict_tabular

    df, t, e = (load_lung(), "time", "status") if dataset == "lung" else (load_rossi(), "week", "arrest")
    df = df.drop(columns=[c for c in ("inst",) if c in df]).rename(columns={t: "time", e: "event"})
    columns = tuple(c for c in df.columns if c not in ("time", "event"))
    order = np.random.default_rng(0).permutation(len(df))
    cut = int(0.7 * len(df))
    train, test = df.iloc[order[:cut]], df.iloc[order[cut:]]
    _, cox_risk = cox_baseline(train, test, list(columns))
    cox_c = harrell_cindex(test["time"], test["event"], cox_risk)
    cfg = PrognosisConfig(steps=300, lr=3e-3, weight_decay=1e-2, batch_size=64)
    head, encoding = fit_tabular(train, columns, train["time"], train["event"], cfg, seed=0)
    ours = harrell_cindex(test["time"], test["event"], predict_tabular(head, encoding, test))
    assert cox_c > 0.55, "the Cox reference itself should find signal"
    assert abs(ours - cox_c) < 0.02, (ours, cox_c)


@pytest.mark.slow
def test_prognosis_unit_logs_survival_metrics_baselines_and_a_task2_file(tiny_cohort, tmp_path):
    from helpers.cli import ci_run

    from pemma.tracking import Tracker

    methods = ("--methods", "ct-only,pemma-lora", "--backbones", "unetr", "--seeds", "0")
    out = ci_run(tmp_path, *methods, "--set", "prognosis.ehr=true", data=tiny_cohort, suite="prognosis")
    assert out.exit_code == 0, out.output
    runs = Tracker(tmp_path).runs("prognosis")
    assert set(runs["status"]) == {"FINISHED"} and len(runs) == 2
    lora = runs[runs["tags.method"] == "pemma-lora"].iloc[0]
    assert lora["tags.prognosis_inputs"] == "CT+PET+EHR"
    assert runs["tags.prognosis_inputs"].tolist().count("CT+EHR") == 1
    for key in ("surv/test_patients", "train_patients", "cox_image/test_patients", "params_trainable"):
        assert np.isfinite(lora[f"metrics.{key}"]), key
    if lora["metrics.surv/test_events"] > 0:
        low, c, high = (lora[f"metrics.surv/cindex_harrell{s}"] for s in ("_low", "", "_high"))
        assert 0 <= c <= 1 and (np.isnan(low) or low <= c <= high)
    task2 = pd.read_csv(tmp_path / lora["tags.predictions_file"])
    assert list(task2.columns) == ["PatientID", "Prediction"]
    assert len(task2) == lora["metrics.surv/test_patients"] and task2["Prediction"].notna().all()
    from pemma.metrics.patients import COLUMNS, read_patient_table

    patients = read_patient_table(tmp_path / lora["tags.patients_file"])
    assert tuple(patients.columns) == COLUMNS and set(patients["kind"]) == {"prognosis"}
    test = patients[patients["split"] == "test"].set_index("patient_id")
    assert len(test) == len(task2) and len(patients) == len(test) + lora["metrics.train_patients"]
    assert np.allclose(test.loc[task2["PatientID"], "risk"], task2["Prediction"])
    assert set(test["subset"]) == {"ctpet+ehr"}


def test_the_cox_loop_resumes_to_the_same_losses_and_weights(tmp_path):
    """Stopped after 7 of 12 steps (checkpoints every 5), then rerun: the same losses and weights as an
    uninterrupted run, as segmentation's loop; a checkpoint of another budget is refused."""
    import torch
    from lifelines.datasets import load_rossi

    from pemma.config import PrognosisConfig
    from pemma.models.prognosis import SurvivalHead, TableEncoding
    from pemma.tasks.prognosis.cox import fit_risk_model

    df = load_rossi()
    columns = ("fin", "age", "race", "wexp", "mar", "paro", "prio")
    encoding = TableEncoding.fit(df, columns)
    values, present = encoding.transform(df)
    time = torch.as_tensor(df["week"].to_numpy(dtype=float), dtype=torch.float32)
    event = torch.as_tensor(df["arrest"].to_numpy().astype(bool))

    def fit(checkpoint=None, on_step=None, steps=12):
        cfg = PrognosisConfig(steps=steps, lr=3e-3, batch_size=32)
        torch.manual_seed(0)
        head = SurvivalHead(None, len(columns), mix=cfg.mix)  # its dropout draws from torch's stream
        forward = lambda idx: head(None, values[idx], present[idx])  # noqa: E731
        losses = fit_risk_model(
            head, forward, len(df), time, event, cfg, 0, torch.device("cpu"),
            checkpoint=checkpoint, checkpoint_every=5, on_step=on_step,
        )  # fmt: skip
        return losses, {n: p.detach().clone() for n, p in head.state_dict().items()}

    whole, weights = fit()

    def stop(step, loss):
        if step == 6:
            raise KeyboardInterrupt

    path = tmp_path / "prognosis.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(path, stop)
    assert path.exists(), "a checkpoint was saved at step 5"
    resumed, resumed_weights = fit(path)
    assert resumed == whole
    assert all(torch.equal(weights[n], resumed_weights[n]) for n in weights)
    with pytest.raises(ValueError, match="another training budget"):
        fit(path, steps=13)
