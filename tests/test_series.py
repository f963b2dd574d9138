"""circuitry.analysis.series: per-second counts from raw calls and from stored rows."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitry.analysis.series import Series, bucketize
from circuitry.exceptions import ConfigurationError


def test_bucketize_counts_calls_and_failures_per_second() -> None:
    calls = [(10.2, False), (10.9, True), (11.0, True), (13.5, False), (13.7, False)]
    s = bucketize(calls)
    assert s.rows() == [(10, 2, 1), (11, 1, 1), (13, 2, 0)]
    assert (s.start, s.end) == (10.0, 14.0)
    assert s.total_calls == 5 and s.total_failures == 2 and s.span == 4.0


def test_negative_timestamps_floor_to_their_second() -> None:
    assert bucketize([(-0.5, True), (0.5, False)]).rows() == [(-1, 1, 1), (0, 1, 0)]


def test_other_widths() -> None:
    s = bucketize([(0.1, True), (0.6, False), (1.2, True)], width=0.5)
    assert s.rows() == [(0, 1, 1), (1, 1, 0), (2, 1, 1)]
    assert s.width == 0.5


def test_a_generator_is_read_once_in_chunks() -> None:
    rng = random.Random(1)
    raw = [(i * 0.001, rng.random() < 0.1) for i in range(200_000)]
    assert bucketize(c for c in raw) == bucketize(raw)


def test_an_explicit_window_keeps_its_bounds_and_refuses_calls_outside() -> None:
    s = bucketize([(5.0, True)], start=0.0, end=900.0)
    assert (s.start, s.end) == (0.0, 900.0)
    with pytest.raises(ConfigurationError, match="outside the window"):
        bucketize([(901.0, True)], start=0.0, end=900.0)
    # A call at the window's last instant is inside.
    assert bucketize([(900.0, True)], start=0.0, end=900.0).total_failures == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [((1.0, "False"), "must be a bool"), ((1.0, 1), "must be a bool"), ((1.0, None), "must be a bool"),
     ((math.nan, True), "finite"), ((math.inf, False), "finite"), (("1", True), "finite"), ((True, True), "finite"),
     ((1.0,), "pair"), (5, "pair")],
)
def test_malformed_calls_are_refused(call: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        bucketize([(0.0, False), call])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("scale", "unit"), [(1000, "milliseconds"), (10**6, "microseconds"), (10**9, "nanoseconds")],
)
def test_timestamps_in_another_unit_are_refused_and_the_unit_named(scale: int, unit: str) -> None:
    # Milliseconds turned a steady stream into "intermittent" over a window of 899,901 s, nanoseconds
    # (time.time_ns()) lost 8,999 calls of 9,000. Anything beyond the year 10000 is not epoch seconds.
    calls = [(1_700_000_000 * scale + i * scale // 10, i % 30 == 0) for i in range(9000)]
    with pytest.raises(ConfigurationError, match=f"timestamp must be in seconds.*looks like {unit}"):
        bucketize(calls)
    with pytest.raises(ConfigurationError, match=f"looks like {unit}"):
        bucketize([(c[0] / scale, c[1]) for c in calls], start=1_700_000_000.0 * scale)
    with pytest.raises(ConfigurationError, match=f"looks like {unit}"):
        Series.from_rows([(1_700_000_000 * scale, 1, 0)], start=0.0, end=1e9)


def test_timestamps_floats_cannot_tell_apart_are_refused_not_dropped() -> None:
    # From 2**53 on, t + 1 == t: the calls of a whole second vanished from the series.
    for calls in ([(2.0**53 + i, i % 3 == 0) for i in range(300)], [(1e300, True), (1e300, False)],
                  [(-1e13, True)]):
        with pytest.raises(ConfigurationError, match="must be in seconds"):
            bucketize(calls)
    year_9999 = 253_402_300_799.0
    assert bucketize([(year_9999, True), (-year_9999, False)]).total_calls == 2


@pytest.mark.parametrize("call", [(1.0, True, "extra"), [1.0, False, 3], (1.0, True, "a", "b")])
def test_a_call_with_more_than_a_timestamp_and_a_flag_is_refused(call: object) -> None:
    with pytest.raises(ConfigurationError, match="pair"):
        bucketize([(0.0, False), call] * 10)  # type: ignore[list-item]


def test_from_rows_adds_up_rows_of_one_second_and_clips_to_the_window() -> None:
    rows = [(100, 5, 1), (99, 3, 0), (100, 2, 2), (50, 9, 9), (200, 1, 1)]
    s = Series.from_rows(rows, start=90.0, end=150.0)
    assert s.rows() == [(99, 3, 0), (100, 7, 3)]


@pytest.mark.parametrize(
    "row", [(1, 2), (1.0, 2, 1), (1, 2, 3), (1, -1, 0), (1, True, 0), "abc"],
)
def test_from_rows_refuses_malformed_rows(row: object) -> None:
    with pytest.raises(ConfigurationError):
        Series.from_rows([row], start=0.0, end=10.0)  # type: ignore[list-item]


def test_the_constructor_validates() -> None:
    with pytest.raises(ConfigurationError, match="strictly increasing"):
        Series(0.0, 10.0, 1.0, (2, 1), (1, 1), (0, 0))
    with pytest.raises(ConfigurationError, match="at least one call"):
        Series(0.0, 10.0, 1.0, (1,), (0,), (0,))
    with pytest.raises(ConfigurationError, match="between 0"):
        Series(0.0, 10.0, 1.0, (1,), (1,), (2,))
    with pytest.raises(ConfigurationError, match="outside the window"):
        Series(0.0, 10.0, 1.0, (11,), (1,), (0,))
    with pytest.raises(ConfigurationError, match="before start"):
        Series(5.0, 1.0, 1.0, (), (), ())
    with pytest.raises(ConfigurationError, match="width"):
        Series(0.0, 1.0, 0.0, (), (), ())


def test_window_selects_overlapping_buckets() -> None:
    s = bucketize([(float(t), t % 3 == 0) for t in range(100)])
    w = s.window(10.5, 20.0)
    assert w.index[0] == 10 and w.index[-1] == 20
    assert (w.start, w.end) == (10.5, 20.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6, allow_nan=False), st.booleans()), max_size=200))
def test_rows_round_trip_and_totals_are_exact(calls: list[tuple[float, bool]]) -> None:
    s = bucketize(calls)
    assert s.total_calls == len(calls)
    assert s.total_failures == sum(f for _, f in calls)
    assert Series.from_rows(s.rows(), start=s.start, end=s.end) == s
