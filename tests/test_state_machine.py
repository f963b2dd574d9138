"""A Hypothesis state machine drives a breaker against a small reference model.

Every step either admits a call, finishes one of the calls in flight (success, failure, ignored
error, cancellation), moves the fake clock, or applies manual control. After every step the breaker
must agree with the model, and the invariants of the design hold: no call is admitted while open;
half-open probes in flight never exceed the permits; exactly one event per real transition; every
permit is released; stale completions change nothing; and success + failure + ignored + rejected +
cancelled equals the calls attempted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from circuitry import CircuitBreaker, CircuitOpenError, EventKind, Permit
from circuitry.events import Dispatcher
from circuitry.testing import CapturedEvents, FakeClock

THRESHOLD = 2
TIMEOUT = 10.0
PROBES = 2
LEASE = 4.0


@dataclass
class Model:
    state: str = "closed"
    gen: int = 0
    consecutive: int = 0
    until: float = 0.0
    probes: dict[int, float] = field(default_factory=dict)
    next_probe: int = 0
    transitions: int = 0

    def to(self, state: str, now: float) -> None:
        self.state = state
        self.gen += 1
        self.consecutive = 0
        self.probes.clear()
        self.transitions += 1
        if state == "open":
            self.until = now + TIMEOUT

    def observe(self, now: float) -> None:
        if self.state == "open" and now >= self.until:
            self.to("half_open", now)

    def admit(self, now: float) -> tuple[int, int | None] | None:
        """(generation, probe id) of an admission, or None for a rejection."""
        if self.state in ("closed", "disabled"):
            return self.gen, None
        if self.state == "forced_open":
            return None
        self.observe(now)
        if self.state == "open":
            return None
        live = {k: v for k, v in self.probes.items() if v > now}
        if len(live) >= PROBES:
            return None
        self.probes = live
        self.next_probe += 1
        self.probes[self.next_probe] = now + LEASE
        return self.gen, self.next_probe

    def finish(self, gen: int, probe: int | None, outcome: str, now: float) -> None:
        if probe is not None:
            self.probes.pop(probe, None)
            valid = gen == self.gen and self.state == "half_open"  # (a probe past its lease still decides)
            if valid and outcome == "success":
                self.to("closed", now)
            elif valid and outcome == "failure":
                self.to("open", now)
            return
        if gen != self.gen or self.state != "closed":
            return
        if outcome == "success":
            self.consecutive = 0
        elif outcome == "failure":
            self.consecutive += 1
            if self.consecutive >= THRESHOLD:
                self.to("open", now)

    def manual(self, state: str, now: float) -> None:
        if self.state == state:
            self.gen += 1
            self.consecutive = 0
            self.probes.clear()
        else:
            self.to(state, now)


class BreakerMachine(RuleBasedStateMachine):
    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.events = CapturedEvents()
        self.breaker = CircuitBreaker(
            "model", clock=self.clock, dispatcher=Dispatcher([self.events]), failure_threshold=THRESHOLD,
            recovery_timeout=TIMEOUT, half_open_max_calls=PROBES, probe_timeout=LEASE,
        )
        self.model = Model()
        self.attempted = 0
        self.counts = {"success": 0, "failure": 0, "ignored": 0, "cancel": 0, "rejected": 0}

    @rule(target=calls)
    def start_call(self) -> object:
        self.attempted += 1
        expected = self.model.admit(self.clock.monotonic())
        try:
            permit = self.breaker.admit()
        except CircuitOpenError:
            assert expected is None, f"rejected, but the model admits {expected}"
            self.counts["rejected"] += 1
            return consumes_nothing
        assert expected is not None, f"admitted {permit!r} while the model says {self.model.state}"
        assert (permit.generation, permit.probe is not None) == (expected[0], expected[1] is not None)
        return (permit, expected)

    @rule(call=consumes(calls), outcome=st.sampled_from(["success", "failure", "ignored", "cancel"]))
    def finish_call(self, call: object, outcome: str) -> None:
        if call is consumes_nothing:
            return
        permit, (gen, probe) = call  # type: ignore[misc]
        assert isinstance(permit, Permit)
        if outcome == "success":
            self.breaker.record_success(permit)
        elif outcome == "failure":
            self.breaker.record_failure(permit, ValueError("x"))
        elif outcome == "ignored":
            self.breaker.record_ignored(permit)
        else:
            self.breaker.release(permit)
        self.counts[outcome] += 1
        self.model.finish(gen, probe, outcome, self.clock.monotonic())

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 4.0, 9.999, 10.0, 25.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["reset", "force_open", "force_closed"]))
    def manual(self, action: str) -> None:
        getattr(self.breaker, action)()
        state = {"reset": "closed", "force_open": "forced_open", "force_closed": "disabled"}[action]
        self.model.manual(state, self.clock.monotonic())

    @invariant()
    def agrees_with_the_model(self) -> None:
        now = self.clock.monotonic()
        self.model.observe(now)
        s = self.breaker.stats()
        assert s.state.value == self.model.state
        assert s.generation == self.model.gen
        assert s.consecutive_failures == self.model.consecutive
        live = sum(1 for v in self.model.probes.values() if v > now)
        assert s.probes_in_flight == live <= PROBES
        assert len(self.events.of(EventKind.TRANSITION)) == self.model.transitions
        assert (s.successes, s.failures, s.ignored, s.cancelled, s.rejected) == (
            self.counts["success"], self.counts["failure"], self.counts["ignored"], self.counts["cancel"],
            self.counts["rejected"])
        assert s.calls + self.in_flight() == self.attempted

    def in_flight(self) -> int:
        return self.attempted - sum(self.counts.values())


consumes_nothing = object()

# Under mutation testing (mutmut sets MUTANT_UNDER_TEST) every core mutant runs this machine: fewer
# examples keep a run near half an hour, and still find a wrong transition within a few dozen.
BreakerMachine.TestCase.settings = settings(
    max_examples=100 if os.environ.get("MUTANT_UNDER_TEST") else 500, stateful_step_count=50, deadline=None)
TestBreakerMachine = BreakerMachine.TestCase
