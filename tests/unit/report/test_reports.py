"""Report definitions on a fixture of tracked runs with per-patient tables: hand-computed statistics,
runs left out, best-value marking, byte-identical regeneration, refused typos, the HTML page in Chromium."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.chromium import CHROMIUM, rendered_images, screenshot
from helpers.runs import FakeRuns
from scipy import stats as sps
from typer.testing import CliRunner

from pemma.cli import app
from pemma.report import stats
from pemma.report.definition import ReportError, load_report
from pemma.report.render import generate, markdown, write
from pemma.report.sources import Sources

# patient -> class -> (|P ∩ G|, |P|, |G|) of the reference (early fusion), seed 0
REFERENCE = {
    "P1": {"gtvp": (40, 50, 60), "gtvn": (10, 20, 20)},
    "P2": {"gtvp": (30, 40, 40), "gtvn": (0, 5, 10)},
    "P3": {"gtvp": (20, 30, 25), "gtvn": (15, 20, 20)},
    "P4": {"gtvp": (50, 55, 60), "gtvn": (5, 10, 15)},
    "P5": {"gtvp": (12, 20, 18), "gtvn": (8, 10, 12)},
}
# pemma-lora overlaps more by these voxels in each patient (both classes)
GAIN = {"P1": 5, "P2": 3, "P3": 2, "P4": 4, "P5": 1}


def _counts(method: str, seed: int) -> dict:
    out = {}
    for pid, classes in REFERENCE.items():
        extra = (GAIN[pid] if method == "pemma-lora" else 0) + seed
        out[pid] = {k: (i + extra, p + seed, g) for k, (i, p, g) in classes.items()}
    return out


def _aggregated(counts: dict) -> float:
    per_class = []
    for klass in ("gtvp", "gtvn"):
        inter = sum(c[klass][0] for c in counts.values())
        size = sum(c[klass][1] + c[klass][2] for c in counts.values())
        per_class.append(2 * inter / size)
    return float(np.mean(per_class))


def _log(runs: FakeRuns, method: str, seed: int, profile="smoke", status="FINISHED", params=None):
    counts = _counts(method, seed)
    rows = []
    for subset in ("ctpet", "pet"):
        for pid, classes in counts.items():
            for klass, (i, p, g) in classes.items():
                rows.append(
                    {
                        "kind": "segmentation",
                        "patient_id": pid,
                        "centre": "MDA",
                        "split": "test",
                        "subset": subset,
                        "class": klass,
                        "grid": "original",
                        "dice": 2 * i / (p + g),
                        "intersection_voxels": i,
                        "prediction_voxels": p,
                        "truth_voxels": g,
                    }
                )
    metrics = {
        "dice_hecktor/ctpet/mean": _aggregated(counts),
        "dice_hecktor/pet/mean": _aggregated(counts),
        "params_trainable": 1000 if method == "early-fusion" else 80,
    }
    for klass in ("gtvp", "gtvn"):  # each class's own, as a segmentation unit logs them
        i, p, g = (sum(c[klass][k] for c in counts.values()) for k in range(3))
        metrics.update({f"dice_hecktor/{subset}/{klass}": 2 * i / (p + g) for subset in ("ctpet", "pet")})
    tags = {"git_commit": "abc123", "git_dirty": "false"}
    return runs.add(
        "t", method, seed, metrics, patients=rows, params=params, tags=tags, profile=profile, status=status
    )


@pytest.fixture
def fixture_runs(tmp_path):
    results = tmp_path / "results"
    runs = FakeRuns(results)
    for seed in (0, 1):
        _log(runs, "early-fusion", seed)
        _log(runs, "pemma-lora", seed)
    _log(runs, "late-fusion", 0, profile="ci")
    _log(runs, "full-finetune", 0, status="FAILED")
    definition = tmp_path / "r.yaml"
    definition.write_text(
        "title: fixture report\n"
        "sections:\n"
        "  - {kind: main, title: Main, suite: t, subsets: [ctpet, pet]}\n"
        "  - {kind: paired, title: Paired, suite: t, reference: early-fusion, subsets: [ctpet, pet]}\n"
        "  - {kind: pareto, title: Pareto, suite: t}\n"
    )
    return runs.tracker, results, definition


def test_bootstrap_interval_is_scipys_bca_of_the_aggregated_dice():
    counts = stats.Counts.from_rows(_rows_frame("early-fusion", 0))
    interval = stats.bootstrap(stats.aggregated_dice(counts, "gtvp"), len(counts.patients))
    inter = np.array([REFERENCE[p]["gtvp"][0] for p in sorted(REFERENCE)], dtype=float)
    size = np.array(
        [REFERENCE[p]["gtvp"][1] + REFERENCE[p]["gtvp"][2] for p in sorted(REFERENCE)], dtype=float
    )
    assert interval.estimate == pytest.approx(2 * inter.sum() / size.sum())
    expected = sps.bootstrap(
        (inter, size),
        lambda i, s, axis=-1: 2 * i.sum(axis=axis) / s.sum(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=stats.RESAMPLES,
        method="BCa",
        rng=np.random.default_rng(stats.SEED),
    ).confidence_interval
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))
    assert interval.low < interval.estimate < interval.high


def _rows_frame(method, seed):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "seed": seed,
                "patient_id": pid,
                "class": k,
                "intersection_voxels": i,
                "prediction_voxels": p,
                "truth_voxels": g,
                "dice": 2 * i / (p + g),
            }
            for pid, classes in _counts(method, seed).items()
            for k, (i, p, g) in classes.items()
        ]
    )


def test_method_interval_is_students_t_over_seeds_and_adds_the_shared_patients():
    # three seeds, disjoint test splits: mean 0.2, sd 0.1, t(0.975, 2) = 4.303 -> 0.2 +- 0.248
    tested = np.kron(np.eye(3, dtype=bool), np.ones((1, 4), dtype=bool))
    per_seed = lambda idx: np.stack([np.full(idx.shape[:-1], v) for v in (0.1, 0.2, 0.3)], axis=-1)  # noqa: E731
    interval = stats.method_interval(per_seed, tested)
    assert interval.scope == stats.METHOD and interval.df == pytest.approx(2)
    assert (interval.low, interval.high) == pytest.approx((0.2 - 0.24841, 0.2 + 0.24841), abs=1e-5)
    # every seed tests the same patients and agrees: the spread over seeds is 0, the patients' sampling
    # error is all that is left, and it comes from the shared-patient covariance
    values = np.array([0.2, 0.5, 0.3, 0.9, 0.4, 0.6])
    same = lambda idx: np.stack([values[idx].mean(axis=-1)] * 3, axis=-1)  # noqa: E731
    interval = stats.method_interval(same, np.ones((3, 6), dtype=bool))
    half = interval.high - interval.estimate
    assert interval.estimate == pytest.approx(values.mean())
    assert half == pytest.approx(sps.t.ppf(0.975, 5) * values.std(ddof=0) / np.sqrt(6), rel=0.1)
    # one seed: the network's patient bootstrap, marked as such
    assert (
        stats.method_interval(lambda idx: same(idx)[..., :1], np.ones((1, 6), dtype=bool)).scope == "network"
    )
    # each seed its own split, two of them sharing a single patient: an interval, not a division by 0
    tested = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=bool)
    scores = np.array([0.2, 0.5, 0.3, 0.9, 0.4])

    def own_split(idx):  # each seed's mean over the drawn patients it tested, seed 1 a little higher
        per = [np.where(tested[s][idx], scores[idx], np.nan) for s in range(2)]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.stack([np.nanmean(p, axis=-1) + 0.05 * s for s, p in enumerate(per)], axis=-1)

    interval = stats.method_interval(own_split, tested)
    assert interval.scope == stats.METHOD and interval.bounded and interval.low < interval.estimate


def test_paired_difference_wilcoxon_and_holm_match_hand_values():
    a = stats.Counts.from_rows(_rows_frame("pemma-lora", 0))
    b = stats.Counts.from_rows(_rows_frame("early-fusion", 0))
    result = stats.paired(a, b)
    assert result.difference.estimate == pytest.approx(
        _aggregated(_counts("pemma-lora", 0)) - _aggregated(REFERENCE)
    )
    assert result.difference.low < result.difference.estimate < result.difference.high
    # every patient gains: 5 positive differences, exact two-sided signed-rank p = 2 / 2^5
    assert result.wilcoxon_p == pytest.approx(2 / 32)
    # Holm: sorted 0.01, 0.02, 0.04 -> 3 x 0.01, 2 x 0.02, max(0.04, previous); NaN stays out of the family
    assert stats.holm([0.04, 0.01, float("nan"), 0.02]) == pytest.approx(
        [0.04, 0.03, np.nan, 0.04], nan_ok=True
    )
    assert stats.holm([0.5, 0.3]) == pytest.approx([0.6, 0.6])


def test_report_cells_runs_left_out_best_marking_and_provenance(fixture_runs):
    tracker, results, definition = fixture_runs
    rendered = generate(load_report(definition), Sources(tracker, results))
    main, paired, pareto = rendered.blocks
    table = main.table.set_index("method")
    assert list(table.index) == ["early-fusion", "pemma-lora"], "the ci and the FAILED run are left out"
    ef = [_aggregated(_counts("early-fusion", s)) for s in (0, 1)]
    cell = table.loc["early-fusion", "Dice CT+PET ↑"]
    assert cell.startswith(f"{np.mean(ef):.3f} ± {np.std(ef, ddof=1):.3f} [")
    lora = [_aggregated(_counts("pemma-lora", s)) for s in (0, 1)]
    assert table.loc["pemma-lora", "Dice CT+PET ↑"].startswith(f"{np.mean(lora):.3f} ± ")
    assert table.loc["pemma-lora", "patients"] == "5" and table.loc["pemma-lora", "seeds"] == "2"
    best = main.best.set_index(main.table["method"])
    assert best.loc["pemma-lora", "Dice CT+PET ↑"] and not best.loc["early-fusion", "Dice CT+PET ↑"]
    text = markdown(rendered)
    assert f"**{table.loc['pemma-lora', 'Dice CT+PET ↑']}**" in text
    rows = paired.table
    assert list(rows["method"]) == ["pemma-lora", "pemma-lora"] and list(rows["input"]) == ["CT+PET", "PET"]
    assert list(rows["seeds"]) == ["2", "2"]
    diff = np.mean(lora) - np.mean(ef)
    assert rows["Δ Dice [95% CI]"].iloc[0].startswith(f"{diff:.3f} [")
    # two seeds on the same 5 patients: the t test over seeds behind the interval (not Wilcoxon over
    # patients, whose unit is not the method's); Holm doubles it across the two rows
    a = stats.Counts.from_rows(pd.concat([_rows_frame("pemma-lora", s) for s in (0, 1)]))
    b = stats.Counts.from_rows(pd.concat([_rows_frame("early-fusion", s) for s in (0, 1)]))
    p = stats.paired(a, b).p
    assert stats.paired(a, b).test == "t" and p < 0.05
    assert rows["p"].iloc[0] == f"{p:.3f}" and rows["Holm p"].iloc[0] == f"{min(1, 2 * p):.3f}"
    # pemma-lora has more Dice with fewer parameters: early fusion is dominated
    assert list(pareto.table["method"]) == ["pemma-lora", "early-fusion"]
    assert list(pareto.table["Pareto front"]) == ["yes", ""]
    footer = dict(rendered.provenance)
    assert "1 failed runs" in footer["left out"] and "1 ci-profile runs" in footer["left out"]
    assert footer["commits"] == "abc123 (clean) (4 runs)"
    with_ci = generate(load_report(definition), Sources(tracker, results, include_ci=True))
    assert "late-fusion" in set(with_ci.blocks[0].table["method"])


def test_markdown_and_latex_regenerate_byte_for_byte_and_latex_uses_booktabs(fixture_runs, tmp_path):
    tracker, results, definition = fixture_runs
    first = write(generate(load_report(definition), Sources(tracker, results)), tmp_path / "a", ("md", "tex"))
    second = write(
        generate(load_report(definition), Sources(tracker, results)), tmp_path / "b", ("md", "tex")
    )
    for a, b in zip(first, second, strict=True):
        assert a.name == b.name and a.read_bytes() == b.read_bytes(), a.name
    tex = (tmp_path / "a" / "r.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "$\\pm$" in tex and "\\bfseries" in tex and "±" not in tex
    assert (tmp_path / "a" / "figures" / "r-3-pareto.png").stat().st_size > 1000


def test_report_reads_a_tracking_store_without_the_results_folder(fixture_runs, tmp_path):
    tracker, results, definition = fixture_runs
    shutil.rmtree(results / "t" / "patients")  # only the MLflow store (and its artifacts) remain
    rendered = generate(load_report(definition), Sources(tracker, results))
    assert rendered.blocks[0].table.set_index("method").loc["pemma-lora", "patients"] == "5"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "title: x\nsections:\n  - {kind: main, title: M, suite: t, subsetz: [ct]}\n",
            "did you mean 'subsets'",
        ),
        ("title: x\nsections:\n  - {kind: mian, title: M, suite: t}\n", "did you mean 'main'"),
        (
            "title: x\nsections:\n  - {kind: main, title: M, suite: t, classes: [GTVp]}\n",
            "'GTVp' is not a class name",
        ),
        (
            "title: x\nsections:\n  - {kind: paired, title: M, suite: t, reference: early-fushion}\n",
            "early-fusion",
        ),
        ("title: x\nsections:\n  - {kind: main, title: M}\n", "'suite' is required"),
        ("title: x\nsections:\n  - kind: main\n    title: [unclosed\n", "line "),
        ("title: x\nsection: []\n", "did you mean 'sections'"),
    ],
)
def test_a_report_definition_with_a_typo_is_refused_naming_file_and_section(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ReportError, match="bad.yaml") as err:
        load_report(path)
    assert message in str(err.value)
    result = CliRunner().invoke(app, ["report", str(path), "--results", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_classes_each_shows_the_runs_classes_and_a_class_they_lack_is_said(fixture_runs, tmp_path):
    """Classes come from the runs' cohort: `each` expands to those the runs logged (HECKTOR's here, in
    label order); a named class they lack (a typo, or another cohort's) is left out with a note."""
    tracker, results, _ = fixture_runs
    definition = tmp_path / "c.yaml"
    definition.write_text(
        "title: classes\nsections:\n"
        "  - {kind: main, title: M, suite: t, subsets: [ctpet], classes: [mean, each, gtvx],"
        " boundary: []}\n"
        "  - {kind: paired, title: P, suite: t, reference: early-fusion, subsets: [ctpet],"
        " classes: [gtvx, each]}\n"
    )
    rendered = generate(load_report(definition), Sources(tracker, results))
    main, paired = rendered.blocks
    dice = [c for c in main.table.columns if "CT+PET" in c]
    assert [c.split(" ")[0] for c in dice] == ["Dice", "GTVp", "GTVn"]
    assert list(dict.fromkeys(paired.table["class"])) == ["GTVp", "GTVn"]
    for block in (main, paired):
        assert any(
            "Class 'gtvx': not in these runs (their cohort's classes: gtvp, gtvn)" in note
            for note in block.notes
        )


def test_validate_checks_the_shipped_reports():
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert "report paper" in result.output and "report smoke" in result.output


def test_cli_report_writes_every_format(fixture_runs, tmp_path):
    tracker, results, definition = fixture_runs
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["report", str(definition), "--results", str(results), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"r.md", "r.tex", "r.html", "figures"}
    html = (out / "r.html").read_text()
    assert html.count("data:image/png;base64,") == 1 and "<table" in html


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_html_page_renders_every_figure_in_headless_chromium(fixture_runs, tmp_path):
    tracker, results, definition = fixture_runs
    out = tmp_path / "out"
    write(generate(load_report(definition), Sources(tracker, results)), out, ("html",))
    sizes = rendered_images(out / "r.html")
    assert len(sizes) == 1
    for complete, width, height in sizes:
        assert complete and width > 100 and height > 100, sizes
    from PIL import Image

    image = np.asarray(Image.open(screenshot(out / "r.html", out / "page.png")).convert("L"))
    assert image.shape == (2000, 1280) and image.std() > 5, "the screenshot is not blank"


def test_written_files_follow_the_umask(tmp_path):
    import os

    from pemma.files import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644, "readable by a team, like any other file"


def test_the_suite_table_holds_every_finished_run_once_whichever_command_ran_it(fixture_runs):
    from pemma.report.tables import write_suite_table

    tracker, results, _ = fixture_runs
    again = _log(FakeRuns(results), "pemma-lora", 0)  # a second FINISHED run of one key (two processes)
    out, table, left_out = write_suite_table(tracker, "t", results)
    assert sorted(table["method"]) == ["early-fusion", "pemma-lora"] and list(table["seeds"]) == [2, 2]
    assert left_out["duplicate FINISHED runs of one key (the latest kept)"] == 1, again
    text = out.read_text()
    assert "late-fusion" not in text and "1 failed runs" in text and "1 duplicate FINISHED" in text


def test_an_interval_exists_when_some_resamples_leave_a_class_undefined():
    import pandas as pd

    rows = []
    for seed in (0, 1):
        for i in range(10):
            for klass in ("gtvp", "gtvn"):
                lacks = klass == "gtvn" and seed == 1 and i > 2  # seed 1: three patients with GTVn
                truth = 0 if lacks else 50 + i
                inter = (0.6 + 0.03 * i) * truth
                rows.append(
                    {
                        "seed": seed,
                        "patient_id": f"P{i}",
                        "class": klass,
                        "intersection_voxels": inter,
                        "prediction_voxels": truth,
                        "truth_voxels": truth,
                        "dice": np.nan,
                    }
                )
    counts = stats.Counts.from_rows(pd.DataFrame(rows))
    interval = stats.bootstrap(stats.aggregated_dice(counts), len(counts.patients))
    # some draws hold none of seed 1's GTVn patients: BCa is undefined, the defined draws give the interval
    assert np.isfinite(interval.low) and interval.low <= interval.estimate <= interval.high


def test_a_new_section_kind_is_one_decorated_builder(fixture_runs, tmp_path, monkeypatch):
    from dataclasses import dataclass

    from pemma.report.sections import KINDS, Block
    from pemma.report.sections.base import Options, section_kind

    monkeypatch.setattr(KINDS, "_entries", dict(KINDS._entries))  # registered for this test only

    @dataclass(frozen=True)
    class CountOptions(Options):
        subsets: tuple[str, ...] = ("ctpet",)
        label: str = "runs"

    @section_kind("count", "how many runs each method has", CountOptions)
    def count(section, sources):
        runs = sources.suite(section.suite).runs
        table = runs.groupby("tags.method").size().rename(section.options.label).reset_index()
        return Block(section, table=table, notes=[f"inputs {', '.join(section.options.subsets)}"])

    tracker, results, _ = fixture_runs
    path = tmp_path / "count.yaml"
    path.write_text("title: c\nsections:\n  - {kind: count, title: C, suite: t, subsets: pet, label: n}\n")
    section = load_report(path).sections[0]
    assert section.options == CountOptions(subsets=("pet",), label="n"), "one value becomes a list"
    block = generate(load_report(path), Sources(tracker, results)).blocks[0]
    assert dict(zip(block.table["tags.method"], block.table["n"], strict=True)) == {
        "early-fusion": 2,
        "pemma-lora": 2,
    }
    assert (
        "how many runs each method has"
        in (
            write(generate(load_report(path), Sources(tracker, results)), tmp_path / "o", ("html",))[0]
        ).read_text()
    )
    path.write_text("title: c\nsections:\n  - {kind: count, title: C, suite: t, subsets: [petct]}\n")
    with pytest.raises(ReportError, match="unknown input subset 'petct'"):
        load_report(path)


def test_a_narrower_view_never_replaces_the_suite_table(fixture_runs):
    """`report --suite` without --include-ci, on a suite holding ci runs: results.md (the wider view a
    ci-profile `run` wrote) is left alone and the narrower view goes beside it."""
    tracker, results, _ = fixture_runs
    wide = CliRunner().invoke(app, ["report", "--suite", "t", "--results", str(results), "--include-ci"])
    assert wide.exit_code == 0, wide.output
    before = (results / "t" / "results.md").read_bytes()
    narrow = CliRunner().invoke(app, ["report", "--suite", "t", "--results", str(results)])
    assert narrow.exit_code == 0, narrow.output
    assert (results / "t" / "results.md").read_bytes() == before and b"late-fusion" in before
    assert "late-fusion" not in (results / "t" / "results-without-ci.md").read_text()


def _paired_markdown(tracker, results, definition, tmp_path, name):
    out = tmp_path / name
    write(generate(load_report(definition), Sources(tracker, results)), out, ("md",))
    return (out / "r.md").read_text()


@pytest.mark.parametrize("damage", ["edited", "truncated"])
def test_a_damaged_per_patient_table_is_restored_from_its_mlflow_copy_never_read(
    fixture_runs, tmp_path, caplog, damage
):
    """Issue 31, items 1-2: the table's sha256, recorded when it was written, is checked before a
    report reads it; a table that fails it (numbers edited, or its end cut off) is replaced by the
    copy logged to the run's MLflow artifacts, with a warning: the report does not change."""
    tracker, results, definition = fixture_runs
    before = _paired_markdown(tracker, results, definition, tmp_path, "before")
    table = sorted((results / "t" / "patients").glob("*early-fusion*s0*.csv"))[0]
    original = table.read_bytes()
    if damage == "edited":
        frame = pd.read_csv(table)
        frame.loc[frame.index[:4], ["dice", "intersection_voxels"]] = [1.0, 999.0]
        frame.to_csv(table, index=False)
    else:
        table.write_bytes(original[: len(original) // 2])
    with caplog.at_level("WARNING"):
        after = _paired_markdown(tracker, results, definition, tmp_path, "after")
    assert after.replace("after", "") == before.replace("before", "")
    assert str(table) in caplog.text and "restored it from the run's MLflow artifact" in caplog.text
    assert table.read_bytes() == original


def test_a_table_damaged_in_both_copies_stops_the_report_naming_it(fixture_runs, tmp_path):
    tracker, results, definition = fixture_runs
    table = sorted((results / "t" / "patients").glob("*pemma-lora*s1*.csv"))[0]
    copies = [table, *(results / "mlartifacts").rglob(table.name)]
    assert len(copies) == 2
    for path in copies:
        path.write_bytes(path.read_bytes()[:200])
    result = CliRunner().invoke(
        app, ["report", str(definition), "--results", str(results), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    assert str(table) in result.output.replace("\n", "") and "restore the file" in result.output
