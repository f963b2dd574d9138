"""The prediction benchmark's parameter oracle (benchmarks/patterns/predict_oracle.py) redraws a case's
events and calls with the case's own parameters: its figures mean something only if the parameters stay
and the randomness changes."""

from __future__ import annotations

import pytest

from benchmarks.patterns import families
from benchmarks.patterns import predict_bench as pb
from benchmarks.patterns import predict_oracle as oracle


@pytest.mark.parametrize(("family", "shape"), [("cron", "constant"), ("bernoulli", "diurnal"),
                                               ("cron", "sparse")])
def test_a_realisation_keeps_the_parameters_and_redraws_the_events(family: str, shape: str) -> None:
    oracle._hook()
    for i in range(4):
        name = f"P-{pb.SEEDS['test']}-{family}-{shape}-{i}"
        case = pb.stream(pb.SEEDS["test"], family, shape, i)
        attempt = oracle._draw(name, family, shape, None, None)
        again = oracle._draw(name, family, shape, f"oracle-0-{name}", attempt)
        assert again is not None and again.label == case.label and again.end == case.end
        assert again.times != case.times  # fresh calls
        # the same failure rate: a cron job's count is fixed by its period; a Bernoulli share by p
        if family == "cron":
            assert abs(again.failures - case.failures) <= max(2, 0.15 * case.failures), (i, again.failures,
                                                                                        case.failures)
        else:
            share, share0 = again.failures / len(again.times), case.failures / len(case.times)
            assert share == pytest.approx(share0, rel=0.35, abs=0.01), (i, share, share0)


def test_without_a_seed_to_switch_to_the_draw_is_the_benchmarks_own() -> None:
    oracle._hook()  # the hooked generators change nothing for an ordinary random source
    name = f"P-{pb.SEEDS['test']}-hawkes-constant-0"
    a = pb.stream(pb.SEEDS["test"], "hawkes", "constant", 0)
    attempt = oracle._draw(name, "hawkes", "constant", None, None)
    rng = oracle._Reseeding(name)  # armed with no seed to switch to: the same draws as families.draw
    for k in range(attempt + 1):
        target = rng.choice(families.TARGETS) * rng.uniform(0.8, 1.25) * pb.DURATION / pb.WINDOW
        s = families.make_stream(rng, "hawkes", "constant", target, pb.DURATION)
    assert s is not None and s.times == a.times and s.failed == a.failed


def test_the_prediction_cases_future_comes_from_the_process_of_their_past() -> None:
    # on-off starts no outage in the last 5 % of its stream: drawn only to the end of the horizon, no
    # outage could fall in the horizon's last 135 s, and the cases tripped a third as often as before
    # now. The stream runs on past the horizon, so outages do.
    horizon_end = pb.NOW + pb.HORIZON
    late = [(a, b) for i in range(32) for a, b in pb.stream(pb.SEEDS["test"], "on-off", "constant", i).failing
            if b > horizon_end - 60.0]
    assert late, "no on-off outage reaches the last minute of the horizon"
    assert any(a > horizon_end - 60.0 for a, _ in late)
