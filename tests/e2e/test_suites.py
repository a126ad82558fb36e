"""Suites are data: every shipped file validates, expands as its grid says, and runs at the ci profile."""

import pytest
from helpers.cli import ci_run

from pemma.config import ConfigError
from pemma.methods import METHODS
from pemma.models.backbones import BACKBONES
from pemma.resources import REPORTS, SUITES
from pemma.suites import expand, load_suite
from pemma.tracking import Tracker

pytestmark = pytest.mark.slow  # end-to-end runs and services: `pytest -m 'not slow'` skips them

SHIPPED = sorted(SUITES.available())


def test_the_shipped_suites_are_there():
    assert {"smoke", "main", "modality-dropout", "rank", "missing-modality", "pemma-design"} <= set(SHIPPED)
    assert "_defaults" not in SHIPPED


def test_grids_expand_to_the_product_of_their_axes():
    main = expand(load_suite("main"))
    assert len(main) == len(METHODS) * len(BACKBONES) * 3
    # The profile's per-backbone sizes: Swin UNETR gets 64^3 crops and feature size 12 at smoke.
    rois = {(c.backbone, c.model.roi, c.model.feature_size) for c in main}
    assert rois == {("unetr", (48, 48, 48), 8), ("swin-unetr", (64, 64, 64), 12)}
    override = expand(load_suite("main"), backbones=["swin"], overrides=["model.roi=[96,96,96]"])
    assert {c.model.roi for c in override} == {(96, 96, 96)}, "the command line wins over profile sizes"
    rank = expand(load_suite("rank"))
    axes = load_suite("rank").grid
    assert len(rank) == len(axes["method"]) * len(axes["adapter.rank"]) * len(axes["adapter.alpha_ratio"])
    alphas = {(c.adapter.rank, c.adapter.alpha_ratio): c.adapter.lora_alpha for c in rank}
    assert alphas[(4, 2.0)] == 8.0 and alphas[(4, None)] == 16.0
    design = expand(load_suite("pemma-design"))
    assert [c.adapter.beta for c in design[:3]] == ["learned", "fixed", "absent"]
    assert design[4].adapter.pet_init == "random" and design[5].adapter.head_trainable
    assert len({c.identity().__repr__() for c in design}) == len(design)


def test_include_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("defaults: {profile: ci, train: {steps: 3}}\ngrid: {seed: [0, 1]}\n")
    (tmp_path / "child.yaml").write_text("include: base.yaml\ngrid: {method: [pemma-lora]}\n")
    units = expand(load_suite(str(tmp_path / "child.yaml")), overrides=["train.steps=5"])
    assert [(c.method, c.seed, c.train.steps, c.profile) for c in units] == [
        ("pemma-lora", 0, 5, "ci"),
        ("pemma-lora", 1, 5, "ci"),
    ]
    (tmp_path / "bad.yaml").write_text("include: base.yaml\ngrid: {train.stpes: [1]}\n")
    with pytest.raises(ConfigError, match="did you mean 'train.steps'"):
        expand(load_suite(str(tmp_path / "bad.yaml")))


@pytest.mark.parametrize("suite", SHIPPED)
def test_every_suite_runs_at_the_ci_profile(suite, tiny_cohort, tmp_path_factory):
    results = tmp_path_factory.getbasetemp() / "suites-results"  # shared: bases are reused across suites
    out = ci_run(results, "--minimal", data=tiny_cohort, suite=suite)
    assert out.exit_code == 0, out.output
    units = expand(load_suite(suite), minimal=True)
    runs = Tracker(results).runs(suite)
    assert len(runs) == len(units) and set(runs["status"]) == {"FINISHED"}
    _paper_report_sections_of(suite, results)


FIGURES = {"continual": "continual-r", "rank": "rank", "prognosis": "km", "pareto": "pareto"}


def _paper_report_sections_of(suite: str, results):
    """The shipped paper report's sections that read this suite fill their tables (and figures)."""
    from pemma.report.definition import load_report
    from pemma.report.render import generate
    from pemma.report.sources import Sources

    report = load_report(REPORTS.find("paper"))
    rendered = generate(report, Sources(Tracker(results), results, include_ci=True))
    filled = {}
    for block in rendered.blocks:
        if block.section.suite != suite:
            continue
        filled.setdefault(block.section.kind, []).append(not block.table.empty)
        if block.section.kind in FIGURES and not block.table.empty:
            assert [f.name for f in block.figures] == [FIGURES[block.section.kind]], block.section.title
    # --minimal runs the first value of every axis: a section filtered to another value may be empty
    assert all(any(v) for v in filled.values()), (suite, filled)


def test_continual_suite_logs_the_result_matrix_and_summaries(tiny_cohort, tmp_path):
    out = ci_run(tmp_path, "--methods", "pemma-lora", "--minimal", data=tiny_cohort, suite="continual")
    assert out.exit_code == 0, out.output
    run = Tracker(tmp_path).runs("continual").iloc[0]
    assert run["params.continual.order"] == "('HGJ', 'HMR')" and run["params.continual.inputs"] == "ct"
    for subset in ("ctpet", "ct", "pet"):
        for stage in range(3):
            for centre in ("MDA", "HGJ", "HMR"):
                assert 0 <= run[f"metrics.cl/{subset}/R/{stage}/{centre}"] <= 1
        for key in ("acc", "bwt", "forgetting"):
            assert f"metrics.cl/{subset}/{key}" in run
    assert "metrics.cl/ct/base/HGJ" in run
    report = (tmp_path / "continual" / "results.md").read_text()
    assert "| after stage | MDA | HGJ | HMR |" in report and "BWT CT+PET" in report


def test_an_override_that_collapses_grid_points_yields_each_unit_once():
    units = expand(load_suite("continual"), methods=["pemma-lora"], overrides=["continual.inputs=ct"])
    assert len(units) == 2  # the two orders; the three input values collapsed into one


def test_a_continual_unit_loads_the_adaptation_a_main_unit_kept(tiny_cohort, tmp_path):
    """Stage 0 of a continual unit is the main unit of the same method, seed and config: loaded, not
    trained again, it gives the numbers the unit gets when it trains that stage itself."""
    same_split = ("--set", "data.split_follows_seed=true")
    alone, shared = tmp_path / "alone", tmp_path / "shared"
    lora = ("--methods", "pemma-lora", "--minimal", *same_split)
    assert ci_run(alone, *lora, data=tiny_cohort, suite="continual").exit_code == 0
    assert ci_run(shared, *lora, "--backbones", "unetr", data=tiny_cohort, suite="main").exit_code == 0
    out = ci_run(shared, *lora, data=tiny_cohort, suite="continual")
    assert out.exit_code == 0, out.output
    assert "loaded, not trained" in out.output
    trained = Tracker(alone).runs("continual").iloc[0]
    loaded = Tracker(shared).runs("continual").iloc[0]
    main = Tracker(shared).runs("main").iloc[0]
    assert trained["tags.run_key"] == loaded["tags.run_key"]
    assert loaded["tags.adaptation_reused"].startswith("pemma-lora__unetr__s0__")
    assert (
        "tags.adaptation_reused" not in trained
        or trained["tags.adaptation_reused"] != trained["tags.adaptation_reused"]
    )  # absent or NaN: it trained
    scored = [k for k in trained.index if k.startswith(("metrics.cl", "metrics.dice_hecktor/"))]
    assert {"metrics.cl_final_loss/1", "metrics.cl_final_loss/2"} <= set(scored)
    for key in scored:
        assert loaded[key] == pytest.approx(trained[key], abs=1e-6, nan_ok=True), key
    assert loaded["metrics.train_final_loss"] == main["metrics.train_final_loss"]
    # a unit with other frozen weights (another seed's CT base) never loads it
    other = ci_run(shared, *lora, "--seeds", "1", data=tiny_cohort, suite="continual")
    assert other.exit_code == 0 and "loaded, not trained" not in other.output
