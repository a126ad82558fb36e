"""Issue 31, item 4: a journal whose last record was cut off (a crash or a full disk mid-write) is
repaired with a warning and the study goes on; one damaged inside stops with the journal and its
line named."""

from __future__ import annotations

import optuna
import pytest

from pemma.search.space import SearchError
from pemma.search.study import journal


def _study(path, trials: int) -> None:
    study = optuna.create_study(study_name="s", storage=journal(path), load_if_exists=True)
    for value in range(trials):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=float(value)))


def test_a_torn_last_record_is_cut_away_and_the_study_goes_on(tmp_path, caplog):
    path = tmp_path / "studies.journal"
    _study(path, 3)
    whole = path.read_bytes()
    path.write_bytes(whole[:-25])  # the last record loses its end and its newline
    with caplog.at_level("WARNING"):
        _study(path, 1)  # opens, repairs, appends a trial after the cut
    assert "last record was cut off" in caplog.text and str(path) in caplog.text
    assert (tmp_path / "studies.journal.torn").read_bytes().strip() == whole[:-25].rsplit(b"\n", 1)[1]
    study = optuna.load_study(study_name="s", storage=journal(path))
    assert len(study.get_trials()) == 3, "two whole trials before the cut, one after"


def test_a_record_damaged_inside_the_journal_is_named_with_its_line(tmp_path):
    path = tmp_path / "studies.journal"
    _study(path, 2)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:-5]  # a record cut off, and others written after it
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(SearchError, match=r"studies.journal: the Optuna journal is damaged at line 2"):
        journal(path)


def test_a_last_record_cut_off_with_its_newline_is_cut_away_too(tmp_path, caplog):
    path = tmp_path / "studies.journal"
    _study(path, 2)
    lines = path.read_bytes().split(b"\n")
    lines[-2] = lines[-2][:-5]  # the last record damaged, its newline kept
    path.write_bytes(b"\n".join(lines))
    with caplog.at_level("WARNING"):
        _study(path, 1)
    assert "last record was cut off" in caplog.text
    assert len(optuna.load_study(study_name="s", storage=journal(path)).get_trials()) == 2
