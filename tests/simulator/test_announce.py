"""Saying what a long step does: a notice only when it runs long, warnings as one-line notes."""
import time
import warnings

import pytest

from simulator.announce import notice_if_slow, warnings_as_notes
from simulator.paths import REPO_ROOT


def test_a_notice_shows_only_when_the_step_runs_long(capsys):
    with notice_if_slow("fitting the runtime model", after_s=0.05):
        time.sleep(0.3)  # a fit
    assert capsys.readouterr().err == "fitting the runtime model\n"
    with notice_if_slow("fitting the runtime model", after_s=0.5):
        pass  # a cached load
    with notice_if_slow("fitting the runtime model", after_s=0.0, enabled=False):
        time.sleep(0.1)
    time.sleep(0.6)  # past the first timer's delay: it was cancelled, not just late
    assert capsys.readouterr().err == ""


def test_user_warnings_become_one_line_notes_once_each():
    notes = []
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with warnings_as_notes(notes):
            for _ in range(3):  # e.g. once per pipeline stage
                warnings.warn(f"{REPO_ROOT}/data/profiles/h200/comm/comm.csv: no all_reduce measured\n  at 4", stacklevel=1)
    assert notes == ["data/profiles/h200/comm/comm.csv: no all_reduce measured at 4"]
    assert shown == []


def test_other_warning_categories_pass_through():
    with pytest.warns(DeprecationWarning, match="old"), warnings_as_notes([]) as notes:
        warnings.warn("old", DeprecationWarning, stacklevel=1)
    assert notes == []
