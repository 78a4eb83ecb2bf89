"""The benchmark's timing loop: a contender far slower than float32 is timed once, not every round."""

from biper.deploy.bench import SLOW_FACTOR, measure, stats


def test_a_very_slow_contender_is_timed_once():
    calls = {"float32": 0, "packed": 0, "slow reference": 0}
    cost = {"float32": 1.0, "packed": 0.5, "slow reference": 50 * SLOW_FACTOR}
    state = {"t": 0.0}  # a fake clock that the functions advance

    def make(name):
        def fn():
            calls[name] += 1
            state["t"] += cost[name]
        return fn

    fns = {name: make(name) for name in calls}
    times, slow = measure(fns, rounds=4, warmup=2, clock=lambda: state["t"], burst=3)
    assert slow == {"slow reference"}
    assert calls["slow reference"] == 1  # its probe call is its timing
    assert times["slow reference"] == [cost["slow reference"]]
    assert calls["float32"] == calls["packed"] == 1 + 2 + 4 * 3
    assert len(times["packed"]) == 12 and set(times["packed"]) == {0.5}
    one = stats(times["slow reference"])
    assert one["median_ms"] == one["min_ms"] == cost["slow reference"] * 1e3 and one["iqr_ms"] == 0


def test_contenders_within_the_factor_stay_in_the_rounds():
    state = {"t": 0.0}

    def make(c):
        def fn():
            state["t"] += c
        return fn

    fns = {"float32": make(1.0), "int8 reference": make(0.9 * SLOW_FACTOR)}
    times, slow = measure(fns, rounds=2, warmup=0, clock=lambda: state["t"], burst=2)
    assert slow == set() and len(times["int8 reference"]) == 4
