"""All-reduce over more GPUs than were measured: ring-model extrapolation from the shipped 2-GPU table."""
import numpy as np
import pandas as pd
import pytest

from simulator.paths import PROFILES_DIR
from simulator.runtime.comm import CommCurve, comm_curve, ring_all_reduce_curve
from simulator.runtime.tables import ProfileError


def test_ring_model_scales_traffic_by_2_n_minus_1_over_n():
    measured = CommCurve(np.log([1e3, 1e6, 1e9]), np.log([0.02, 0.05, 5.0]))
    at4 = ring_all_reduce_curve(measured, measured_world_size=2, world_size=4)
    # At 4 GPUs each link carries 1.5x the traffic of a 2-GPU all-reduce of the same message.
    assert at4.ms(np.array([1e9 / 1.5]))[0] == pytest.approx(5.0)
    assert at4.ms(np.array([1e9]))[0] == pytest.approx(7.5)  # past the table: linear in bytes
    at8 = ring_all_reduce_curve(measured, 2, 8)
    assert at8.ms(np.array([1e9 / 1.75]))[0] == pytest.approx(5.0)


def test_extrapolates_all_reduce_with_a_warning_but_not_send_recv():
    path = PROFILES_DIR / "h200" / "comm" / "comm.csv"
    frame = pd.read_csv(path)
    with pytest.warns(UserWarning, match="extrapolating from world_size=2"):
        curve = comm_curve(frame, path, "all_reduce", 4)
    two = comm_curve(frame, path, "all_reduce", 2)
    big = np.array([64e6])
    assert curve.ms(big)[0] > two.ms(big)[0]  # more traffic per link at 4 GPUs
    with pytest.raises(ProfileError, match="world_size=4"):
        comm_curve(frame, path, "send_recv", 4)
