"""Saying what a long step does: a notice only when it runs long."""
import time

from simulator.announce import notice_if_slow


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
