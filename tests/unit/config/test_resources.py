"""Shipped files found by name: one shelf per kind, the user's folders first, did-you-mean on a miss."""

import pytest

from pemma.config import ConfigError
from pemma.resources import CLAIMS_PLANS, PROFILES, REPORTS, SPACES, SUITES, Shelf, did_you_mean, read_yaml


def test_every_shelf_holds_the_shipped_files():
    assert {"smoke", "main", "rank"} <= set(SUITES.available())
    assert "_defaults" not in SUITES.available(), "an include is not a suite"
    assert set(SPACES.available()) == {"rank", "pareto"}
    assert set(REPORTS.available()) == {"paper", "smoke"}
    assert {"pemma", "pemma-paper"} <= set(CLAIMS_PLANS.available())
    assert set(PROFILES.available()) == {"ci", "smoke", "paper", "paper-harness"}


def test_a_folder_on_the_environment_path_comes_first(tmp_path, monkeypatch):
    (tmp_path / "smoke.yaml").write_text("defaults: {}\n")
    monkeypatch.setenv("PEMMA_SUITE_PATH", str(tmp_path))
    assert SUITES.find("smoke") == tmp_path / "smoke.yaml"
    assert SUITES.find(str(tmp_path / "smoke.yaml")) == tmp_path / "smoke.yaml", "a path works too"


def test_a_miss_names_the_kind_the_closest_names_and_the_folders():
    shelf = Shelf("suite", ("benchmarks",))
    with pytest.raises(ConfigError) as err:
        shelf.find("smok", ConfigError)
    text = str(err.value)
    assert "unknown suite 'smok'; did you mean 'smoke'?" in text
    assert "benchmarks" in text and "known:" in text
    assert did_you_mean("zzzz", ["smoke"]) == ""


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+, column \d+: not valid YAML"):
        read_yaml(bad, "suite file", ConfigError)
