import numpy as np
import pytest

from kubeforge.compression.bench import _time_side_by_side, measure_all
from kubeforge.compression.quantize import int8_dynamic


def test_side_by_side_timing_gives_every_candidate_at_least_the_requested_runs(teacher, digits):
    timed = _time_side_by_side([teacher, int8_dynamic(teacher)], digits.X_test, threads=1, runs=100, rounds=3)
    for labels, b1, b32 in timed:
        assert len(labels) == len(digits.X_test)
        assert len(b1) >= 100 and len(b32) >= 100 and np.all(b1 > 0) and np.all(b32 > 0)


def test_measure_all_reports_against_the_first_candidate(teacher, digits):
    base, quantized = measure_all([teacher, int8_dynamic(teacher)], digits.X_test, digits.y_test, threads=1, runs=100,
                                  rounds=2)
    assert base.size_ratio == 1.0 and base.accuracy_drop == 0.0
    assert quantized.size_ratio >= 3.5
    assert quantized.accuracy_drop == pytest.approx((base.accuracy - quantized.accuracy) * 100, abs=1e-3)


@pytest.mark.parametrize(("candidates", "rounds", "message"), [
    ([], 5, "needs at least the baseline"),
    (None, 0, "rounds must be >= 1"),
])
def test_measure_all_refuses_bad_requests_before_timing(candidates, rounds, message, teacher, digits):
    with pytest.raises(ValueError, match=message):
        measure_all([teacher] if candidates is None else candidates, digits.X_test, digits.y_test, threads=1,
                    runs=100, rounds=rounds)
