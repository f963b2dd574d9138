"""Hot-path benchmark: the per-call cost of circuitry against pybreaker, circuitbreaker, purgatory and
aiobreaker, side by side, in one process.

Run from the repository root::

    python benchmarks/bench_core.py            # full run (9 repeats, about 70 s on 2 cores)
    python benchmarks/bench_core.py --quick    # a smoke run (about 5 s; numbers are rough)
    python benchmarks/bench_core.py --store    # also time circuitry with the SQLite store attached
                                               # (errors clearly if circuitry.store is not there)
    CIRCUITRY_NO_SPEEDUPS=1 python benchmarks/bench_core.py    # the pure-Python build

Every run also times circuitry with a store *link* attached ("circuitry+link": an in-memory fake with
a ``deque(maxlen=1000)`` failure log and a ``take_probe()`` that grants from memory), which is what a
store adds to every call, without depending on a store's I/O.

What is measured: ns per call of a protected function (or ``with`` block) and its *overhead*: the same
loop around the bare, unprotected function, timed in the same run, subtracted. Each cell is a
``perf_counter_ns`` loop of N calls whose source is generated (as :mod:`timeit` does), so every library
runs the very same loop shape and only the protected statement differs. Cells are timed in chunks of
``CHUNK`` calls (a per-cell reset may run between chunks, outside the timing: purgatory's rejection
re-raises one exception object whose traceback grows on every raise and must be cleared). Every repeat
runs every library of a path back to back (interleaved, in a rotating order) so machine drift hits them
alike; the reported value is the minimum over the repeats, and the spread table shows min/median/max.

Breakers are configured so that no event hooks run: circuitry uses ``Registry(hooks=[])``, the peers
have no listeners. Open circuits are *tripped* by real failures (threshold 1, recovery timeout of about
11 days) so every library is in its plain ``open`` state, not a forced one; counted-failure cells use a
threshold of 10**9 so the circuit never opens. After the timing, every cell's breaker is checked to be
still in the state the cell assumes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import metadata
from typing import Any

import aiobreaker
import circuitbreaker
import purgatory
import pybreaker
from purgatory.domain.model import OpenedState

import circuitry
from circuitry import CircuitBreaker, CircuitOpenError, CircuitState, Event, Policy, Registry, _faces, circuit

PEERS = ("pybreaker", "circuitbreaker", "purgatory", "aiobreaker")
LIBS = ("circuitry", *PEERS)
LONG = 1e6  # recovery timeout (s): an open circuit stays open for the whole run
HUGE = 10**9  # failure threshold for counted-failure cells: the circuit never opens
CHUNK = 10_000
TARGET = 0.5  # circuitry's overhead must be <= TARGET x the fastest peer's

#: (key, label, async?, relative N) in table order; the last ones are extra rows.
PATHS: list[tuple[str, str, bool, float]] = [
    ("sync_ok", "1. sync success (decorated def)", False, 1.0),
    ("async_ok", "2. async success (decorated async def)", True, 0.5),
    ("with", "3. `with` block (breaker object held)", False, 1.0),
    ("async_with", "4. `async with` block (breaker object held)", True, 0.5),
    ("reject_sync", "5. rejection, sync (open; caller catches)", False, 0.5),
    ("reject_async", "6. rejection, async", True, 0.25),
    ("fail_sync", "7. counted failure, sync (stays closed)", False, 0.5),
    ("fail_async", "8. counted failure, async", True, 0.25),
    ("with_inline", "extra: `with` looked up per block by name", False, 1.0),
    ("async_with_inline", "extra: `async with` looked up per block by name", True, 0.5),
    ("call", "extra: `breaker.call(fn, x)`", False, 1.0),
]
MAIN_PATHS = 8


class Boom(Exception):
    """The counted failure every library sees."""


def work(x: Any) -> Any:
    return x


def boom(x: Any) -> Any:
    raise Boom(x)


async def awork(x: Any) -> Any:
    return x


async def aboom(x: Any) -> Any:
    raise Boom(x)


# -- cells -------------------------------------------------------------------------------------------


@dataclass
class Cell:
    path: str
    lib: str
    body: str  # the loop body (source); names come from ns
    ns: dict[str, Any]
    is_async: bool
    comparable: bool = True  # False: shown in the table, left out of "fastest peer"
    reset: Callable[[], None] | None = None  # between chunks, outside the timing
    check: Callable[[], bool] | None = None  # after the run: is the breaker still in the assumed state?
    run: Any = None
    samples: list[float] = field(default_factory=list)  # ns per call, one per repeat

    def compile(self) -> None:
        head = "async def" if self.is_async else "def"
        src = (f"{head} run(n, _pc=_pc):\n    r = range(n)\n    t0 = _pc()\n    for _ in r:\n"
               f"{textwrap.indent(textwrap.dedent(self.body).strip(), ' ' * 8)}\n    return _pc() - t0\n")
        ns = {"_pc": time.perf_counter_ns, **self.ns}
        exec(compile(src, f"<{self.lib}:{self.path}>", "exec"), ns)
        self.run = ns["run"]

    def time(self, n: int, loop: asyncio.AbstractEventLoop) -> float:
        """ns per call over n calls, in chunks."""
        total = 0
        done = 0
        while done < n:
            k = min(CHUNK, n - done)
            if self.reset is not None:
                self.reset()
            total += loop.run_until_complete(self.run(k)) if self.is_async else self.run(k)
            done += k
        if self.reset is not None:
            self.reset()
        return total / n


CALL = "f(1)"
AWAIT = "await f(1)"
CATCH = "try:\n    f(1)\nexcept E:\n    pass"
ACATCH = "try:\n    await f(1)\nexcept E:\n    pass"
WITH = "with cm:\n    work(1)"
AWITH = "async with cm:\n    work(1)"


def build_cells(loop: asyncio.AbstractEventLoop) -> list[Cell]:
    cells: list[Cell] = []

    def add(path: str, lib: str, body: str, is_async: bool = False, **kw: Any) -> None:
        opts = {k: kw.pop(k) for k in ("comparable", "reset", "check") if k in kw}
        cells.append(Cell(path, lib, body, {"work": work, **kw}, is_async, **opts))

    # -- bare baselines: the same loop, the same statement, no breaker --------------------------------
    add("sync_ok", "bare", CALL, f=work)
    add("async_ok", "bare", AWAIT, True, f=awork)
    add("with", "bare", "work(1)")
    add("async_with", "bare", "work(1)", True)
    add("reject_sync", "bare", CATCH, f=work, E=Exception)  # the bare function does not raise
    add("reject_async", "bare", ACATCH, True, f=awork, E=Exception)
    add("fail_sync", "bare", CATCH, f=boom, E=Boom)
    add("fail_async", "bare", ACATCH, True, f=aboom, E=Boom)
    add("with_inline", "bare", "work(1)")
    add("async_with_inline", "bare", "work(1)", True)
    add("call", "bare", "f(work, 1)", f=lambda fn, x: fn(x))  # a one-line forwarding call, for scale

    add_circuitry(add, Registry(hooks=[]), "circuitry", loop)
    add_circuitry(add, LinkedRegistry(hooks=[]), LINKED, loop)
    add_pybreaker(add, loop)
    add_circuitbreaker(add, loop)
    add_purgatory(add, loop)
    add_aiobreaker(add, loop)
    return cells


LINKED = "circuitry+link"


class FakeLink:
    """A store's link with no store behind it: what the breaker calls on every path, in memory."""

    def __init__(self) -> None:
        self.failure_log: deque[BaseException] = deque(maxlen=1000)

    def take_probe(self) -> int | None:
        return 0  # granted from memory

    def probe_retry_after(self) -> float:
        return 1.0

    def probe_done(self, lease: int) -> None:
        pass

    def transitioned(self, event: Event) -> None:
        pass


class LinkedRegistry(Registry):
    """Every breaker it makes is linked to its own FakeLink, as a store's adopt() would do."""

    def get(self, name: str, policy: Policy | None = None, **policy_kwargs: Any) -> CircuitBreaker:
        breaker = super().get(name, policy, **policy_kwargs)
        if breaker.linked is None:
            breaker.link(FakeLink())
        return breaker


def _trip(fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
    try:
        result = fn()
        if asyncio.iscoroutine(result):
            loop.run_until_complete(result)
    except Exception:
        return
    raise AssertionError("tripping call did not raise")


def add_circuitry(add: Callable[..., None], reg: Registry, lib: str, loop: asyncio.AbstractEventLoop) -> None:
    def state_is(name: str, state: CircuitState) -> Callable[[], bool]:
        return lambda: reg.get(name).state is state

    def c(name: str, **kw: Any) -> circuitry.Circuit:
        return circuit(f"{lib}:{name}", registry=reg, **kw)

    add("sync_ok", lib, CALL, f=c("ok")(work), check=state_is(f"{lib}:ok", CircuitState.CLOSED))
    add("async_ok", lib, AWAIT, True, f=c("aok")(awork))
    add("with", lib, WITH, cm=c("with"))
    add("async_with", lib, AWITH, True, cm=c("awith"))
    # by name on every block, as in `with circuit("inventory_api"):` (the README's form)
    add("with_inline", lib, f"with circuit({lib + ':with'!r}, registry=reg):\n    work(1)",
        circuit=circuit, reg=reg)
    add("async_with_inline", lib, f"async with circuit({lib + ':awith'!r}, registry=reg):\n    work(1)", True,
        circuit=circuit, reg=reg)
    add("call", lib, "f(work, 1)", f=c("call").call)

    rej = c("rej", failure_threshold=1, recovery_timeout=LONG)
    _trip(lambda: rej(boom)(1), loop)
    add("reject_sync", lib, CATCH, f=rej(work), E=CircuitOpenError,
        check=state_is(f"{lib}:rej", CircuitState.OPEN))
    arej = c("arej", failure_threshold=1, recovery_timeout=LONG)
    _trip(lambda: arej(aboom)(1), loop)
    add("reject_async", lib, ACATCH, True, f=arej(awork), E=CircuitOpenError,
        check=state_is(f"{lib}:arej", CircuitState.OPEN))
    add("fail_sync", lib, CATCH, f=c("fail", failure_threshold=HUGE)(boom), E=Boom,
        check=state_is(f"{lib}:fail", CircuitState.CLOSED))
    add("fail_async", lib, ACATCH, True, f=c("afail", failure_threshold=HUGE)(aboom), E=Boom,
        check=state_is(f"{lib}:afail", CircuitState.CLOSED))


def add_pybreaker(add: Callable[..., None], loop: asyncio.AbstractEventLoop) -> None:
    # No asyncio support: pybreaker's async path is Tornado's gen.coroutine (call_async), and decorating an
    # `async def` records a success when the coroutine object is created. No `async with` either.
    lib = "pybreaker"
    E = pybreaker.CircuitBreakerError

    def state_is(b: pybreaker.CircuitBreaker, s: str) -> Callable[[], bool]:
        return lambda: b.current_state == s

    add("sync_ok", lib, CALL, f=pybreaker.CircuitBreaker(name="ok")(work))
    add("with", lib, "with cm.calling():\n    work(1)", cm=pybreaker.CircuitBreaker(name="with"))
    add("call", lib, "f(work, 1)", f=pybreaker.CircuitBreaker(name="call").call)
    rej = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=LONG, name="rej")
    _trip(lambda: rej(boom)(1), loop)
    add("reject_sync", lib, CATCH, f=rej(work), E=E, check=state_is(rej, pybreaker.STATE_OPEN))
    fail = pybreaker.CircuitBreaker(fail_max=HUGE, name="fail")
    add("fail_sync", lib, CATCH, f=fail(boom), E=Boom, check=state_is(fail, pybreaker.STATE_CLOSED))


def add_circuitbreaker(add: Callable[..., None], loop: asyncio.AbstractEventLoop) -> None:
    # `with breaker:` never checks whether the circuit is open (its __enter__ is empty) and neither does
    # `breaker.call()`; only the decorator does. Those forms are shown but not comparable.
    lib = "circuitbreaker"
    CB = circuitbreaker.CircuitBreaker
    E = circuitbreaker.CircuitBreakerError

    def state_is(b: circuitbreaker.CircuitBreaker, s: str) -> Callable[[], bool]:
        return lambda: b.state == s

    add("sync_ok", lib, CALL, f=CB(name="ok")(work))
    add("async_ok", lib, AWAIT, True, f=CB(name="aok")(awork))
    add("with", lib, WITH, cm=CB(name="with"), comparable=False)
    add("call", lib, "f(work, 1)", f=CB(name="call").call, comparable=False)
    for path, name, ok, bad, body, is_async in (("reject_sync", "rej", work, boom, CATCH, False),
                                                ("reject_async", "arej", awork, aboom, ACATCH, True)):
        b = CB(failure_threshold=1, recovery_timeout=LONG, name=name)
        _trip(lambda b=b, bad=bad: b(bad)(1), loop)
        add(path, lib, body, is_async, f=b(ok), E=E, check=state_is(b, circuitbreaker.STATE_OPEN))
    for path, name, bad, body, is_async in (("fail_sync", "fail", boom, CATCH, False),
                                            ("fail_async", "afail", aboom, ACATCH, True)):
        b = CB(failure_threshold=HUGE, name=name)
        add(path, lib, body, is_async, f=b(bad), E=Boom, check=state_is(b, circuitbreaker.STATE_CLOSED))


def add_purgatory(add: Callable[..., None], loop: asyncio.AbstractEventLoop) -> None:
    # The decorator looks the breaker up by name (get_breaker) on every call, like circuitry's. The `with`
    # row holds the object get_breaker() returned; the "by name" rows call get_breaker() per block.
    lib = "purgatory"
    sync = purgatory.SyncCircuitBreakerFactory()
    asy = purgatory.AsyncCircuitBreakerFactory()

    def state_is(ctx: Any, s: str) -> Callable[[], bool]:
        return lambda: ctx.context.state == s

    def clear_tb(brk: Any) -> Callable[[], None]:
        # A rejection raises the OpenedState object itself, the same one every time; each raise appends
        # to its __traceback__ (6 entries, frames kept alive). Cleared between chunks, outside the timing.
        def reset() -> None:
            brk.context._state.__traceback__ = None

        return reset

    add("sync_ok", lib, CALL, f=sync("ok")(work))
    add("async_ok", lib, AWAIT, True, f=asy("aok")(awork))
    add("with", lib, WITH, cm=sync.get_breaker("with"))
    add("async_with", lib, AWITH, True, cm=loop.run_until_complete(asy.get_breaker("awith")))
    add("with_inline", lib, "with g('with'):\n    work(1)", g=sync.get_breaker)
    add("async_with_inline", lib, "async with await g('awith'):\n    work(1)", True, g=asy.get_breaker)

    _trip(lambda: sync("rej", threshold=1, ttl=LONG)(boom)(1), loop)
    brk = sync.get_breaker("rej")
    add("reject_sync", lib, CATCH, f=sync("rej", threshold=1, ttl=LONG)(work), E=OpenedState,
        reset=clear_tb(brk), check=state_is(brk, "opened"))
    _trip(lambda: asy("arej", threshold=1, ttl=LONG)(aboom)(1), loop)
    abrk = loop.run_until_complete(asy.get_breaker("arej"))
    add("reject_async", lib, ACATCH, True, f=asy("arej", threshold=1, ttl=LONG)(awork), E=OpenedState,
        reset=clear_tb(abrk), check=state_is(abrk, "opened"))
    # get_breaker() creates the breaker with these settings before anything else looks it up
    fbrk = sync.get_breaker("fail", threshold=HUGE)
    add("fail_sync", lib, CATCH, f=sync("fail", threshold=HUGE)(boom), E=Boom, check=state_is(fbrk, "closed"))
    afbrk = loop.run_until_complete(asy.get_breaker("afail", threshold=HUGE))
    add("fail_async", lib, ACATCH, True, f=asy("afail", threshold=HUGE)(aboom), E=Boom,
        check=state_is(afbrk, "closed"))


def add_aiobreaker(add: Callable[..., None], loop: asyncio.AbstractEventLoop) -> None:
    # Decorator (sync and async) and .call(); no context manager.
    lib = "aiobreaker"
    CB = aiobreaker.CircuitBreaker
    E = aiobreaker.CircuitBreakerError
    OPEN, CLOSED = aiobreaker.CircuitBreakerState.OPEN, aiobreaker.CircuitBreakerState.CLOSED

    def state_is(b: aiobreaker.CircuitBreaker, s: Any) -> Callable[[], bool]:
        return lambda: b.current_state == s

    add("sync_ok", lib, CALL, f=CB(name="ok")(work))
    add("async_ok", lib, AWAIT, True, f=CB(name="aok")(awork))
    # .call() of an undecorated function (a decorated one would skip the breaker: _ignore_on_call)
    add("call", lib, "f(work, 1)", f=CB(name="call").call)
    for path, ok, bad, body, is_async in (("reject_sync", work, boom, CATCH, False),
                                          ("reject_async", awork, aboom, ACATCH, True)):
        b = CB(fail_max=1, timeout_duration=timedelta(seconds=LONG), name=path)
        _trip(lambda b=b, bad=bad: b(bad)(1), loop)
        add(path, lib, body, is_async, f=b(ok), E=E, check=state_is(b, OPEN))
    for path, bad, body, is_async in (("fail_sync", boom, CATCH, False), ("fail_async", aboom, ACATCH, True)):
        b = CB(fail_max=HUGE, name=path)
        add(path, lib, body, is_async, f=b(bad), E=Boom, check=state_is(b, CLOSED))


# -- the store row (circuitry.store may not exist yet) -----------------------------------------------

STORE_PATHS = ("sync_ok", "async_ok", "with", "reject_sync", "fail_sync")


def store_registry(tmpdir: str) -> tuple[Registry, Any]:
    """A hook-less registry with circuitry's SQLite store attached.

    The store's API is not settled yet: this is the one place to adapt when ``circuitry.store`` lands.
    It assumes a class ``SQLiteStore(path)`` (or ``Store(path)``) that :meth:`Registry.attach` accepts
    (an object with ``adopt(breaker)``). Raises ImportError if the module is missing.
    """
    import circuitry.store as store_mod  # type: ignore[import-not-found]

    if getattr(store_mod, "__file__", None) is None:  # a bare directory (namespace package): not there yet
        raise ImportError("circuitry.store is an empty namespace package")
    factory = getattr(store_mod, "SQLiteStore", None) or getattr(store_mod, "Store", None)
    if factory is None:
        raise RuntimeError("circuitry.store has no SQLiteStore/Store: update store_registry() in "
                           "benchmarks/bench_core.py to the store's API")
    store = factory(os.path.join(tmpdir, "bench.sqlite3"))
    reg = Registry(hooks=[])
    reg.attach(store)
    return reg, store


# -- running -----------------------------------------------------------------------------------------


def machine() -> list[str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dists = {"circuitry": "circuitry-breaker"}  # circuitry's distribution name (its import name is taken on PyPI)
    versions = ", ".join(f"{name} {metadata.version(dists.get(name, name))}" for name in LIBS)
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    if rev:
        versions += f" (circuitry at git {rev})"
    return [
        f"platform: {platform.platform()}",
        f"CPU: {cpu} ({os.cpu_count()} logical CPUs)",
        f"Python: {sys.version.split()[0]} ({platform.python_implementation()})",
        f"libraries: {versions}",
        "circuitry faces: " + ("C accelerator (circuitry._speedups)" if _faces.SPEEDUPS else
                               "pure Python (CIRCUITRY_NO_SPEEDUPS is set, or the extension was not built)"),
    ]


def run_all(cells: list[Cell], repeats: int, n_base: int, loop: asyncio.AbstractEventLoop) -> None:
    by_path: dict[str, list[Cell]] = {}
    for cell in cells:
        by_path.setdefault(cell.path, []).append(cell)
    scale = {key: rel for key, _, _, rel in PATHS}
    for cell in cells:  # compile, check the body runs as intended, warm up (3.11 specialises on use)
        cell.compile()
        cell.time(2_000, loop)
    for rep in range(repeats):
        for path, group in by_path.items():
            n = max(CHUNK, int(n_base * scale[path]))
            k = rep % len(group)
            for cell in group[k:] + group[:k]:  # interleaved, in a rotating order
                gc.collect()
                gc.disable()
                try:
                    cell.samples.append(cell.time(n, loop))
                finally:
                    gc.enable()
        print(f"  repeat {rep + 1}/{repeats} done", file=sys.stderr, flush=True)


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def report(cells: list[Cell], store_lib: str | None) -> list[str]:
    best: dict[tuple[str, str], float] = {(c.path, c.lib): min(c.samples) for c in cells}
    comparable = {(c.path, c.lib): c.comparable for c in cells}
    out: list[str] = []

    def overhead(path: str, lib: str) -> float | None:
        if (path, lib) not in best or (path, "bare") not in best:
            return None
        return best[path, lib] - best[path, "bare"]

    head = ["path", "bare ns", "circuitry", *PEERS, "fastest peer", "circuitry / fastest", "meets 0.5x?"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (path, label, _, _) in enumerate(PATHS):
        if (path, "bare") not in best:  # left out with --paths
            continue
        if i == MAIN_PATHS:
            out.append("| *extra rows* |" + " |" * (len(head) - 1))
        ours = overhead(path, "circuitry")
        row = [label, fmt(best[path, "bare"]), fmt(ours)]
        peers: dict[str, float] = {}
        for lib in PEERS:
            o = overhead(path, lib)
            if o is not None and not comparable[path, lib]:
                row.append(f"({fmt(o)})†")
                continue
            row.append(fmt(o))
            if o is not None:
                peers[lib] = o
        if peers and ours is not None:
            fastest = min(peers, key=peers.__getitem__)
            ratio = ours / peers[fastest] if peers[fastest] > 0 else float("inf")
            row += [f"{fastest} ({fmt(peers[fastest])})", f"{ratio:.2f}x",
                    "yes" if ratio <= TARGET else "**no**"]
        else:
            row += ["—", "—", "—"]
        out.append("| " + " | ".join(row) + " |")
    out += [
        "",
        "ns per call; each library column is its overhead over `bare` (the same loop around the "
        "unprotected function), minimum over the repeats. — : the library has no such form. "
        "† : not comparable (circuitbreaker's `with` and `.call()` never check whether the circuit is "
        "open), left out of *fastest peer*.",
    ]
    out += ["", f"With a store link attached ({LINKED}: an in-memory fake link, failure log `deque(maxlen=1000)`,"
            " `take_probe()` granting from memory), same run:", "",
            "| path | circuitry | circuitry+link | fastest peer | circuitry+link / fastest | meets 0.5x? |",
            "|---|---|---|---|---|---|"]
    for path, label, _, _ in PATHS[:MAIN_PATHS]:
        ours, linked = overhead(path, "circuitry"), overhead(path, LINKED)
        peers = {lib: o for lib in PEERS if (o := overhead(path, lib)) is not None and comparable[path, lib]}
        if linked is None or not peers:
            continue
        fastest = min(peers, key=peers.__getitem__)
        ratio = linked / peers[fastest] if peers[fastest] > 0 else float("inf")
        out.append(f"| {label} | {fmt(ours)} | {fmt(linked)} | {fastest} ({fmt(peers[fastest])}) | {ratio:.2f}x | "
                   f"{'yes' if ratio <= TARGET else '**no**'} |")
    if store_lib is not None:
        out += ["", "| path | circuitry overhead | circuitry + SQLite store overhead | store cost |",
                "|---|---|---|---|"]
        for path, label, _, _ in PATHS:
            if (path, store_lib) in best and (path, "bare") in best:
                a, b = overhead(path, "circuitry"), overhead(path, store_lib)
                assert a is not None
                assert b is not None
                out.append(f"| {label} | {fmt(a)} | {fmt(b)} | {fmt(b - a)} |")
    out += ["", "Spread (ns per call, min / median / max over the repeats, loop included):", "",
            "| path | " + " | ".join(["bare", *LIBS, LINKED] + ([store_lib] if store_lib else [])) + " |",
            "|---|" + "---|" * (len(LIBS) + 2 + (1 if store_lib else 0))]
    cols = ["bare", *LIBS, LINKED] + ([store_lib] if store_lib else [])
    index = {(c.path, c.lib): c for c in cells}
    for path, label, _, _ in PATHS:
        if (path, "bare") not in best:
            continue
        row = [label]
        for lib in cols:
            c = index.get((path, lib))
            if c is None:
                row.append("—")
            else:
                s = c.samples
                row.append(f"{min(s):,.0f} / {statistics.median(s):,.0f} / {max(s):,.0f}")
        out.append("| " + " | ".join(row) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 repeats, 10x fewer calls")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 9; 3 with --quick)")
    ap.add_argument("-n", type=int, default=None, help="calls per sync-success cell (default 200000)")
    ap.add_argument("--paths", default=None,
                    help="comma-separated path keys to time (default: all), e.g. fail_sync,fail_async")
    ap.add_argument("--store", action="store_true",
                    help="require the circuitry + SQLite store cells (error if circuitry.store is missing); "
                         "without it they are added only when circuitry.store imports")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    n_base = args.n or (20_000 if args.quick else 200_000)
    if repeats < 1 or n_base < 1:
        ap.error("--repeats and -n must be positive")

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    cells = build_cells(loop)
    if args.paths:
        keep = set(args.paths.split(","))
        unknown = keep - {key for key, _, _, _ in PATHS}
        if unknown:
            ap.error(f"unknown paths: {', '.join(sorted(unknown))}")
        cells = [c for c in cells if c.path in keep]

    store_lib: str | None = None
    with tempfile.TemporaryDirectory() as tmpdir:
        try:
            reg, _store = store_registry(tmpdir)
        except ImportError as err:
            if args.store:
                print(f"--store: circuitry.store is not available ({err})", file=sys.stderr)
                return 2
        except Exception as err:
            if args.store:
                print(f"--store: circuitry.store could not be attached: {err!r}", file=sys.stderr)
                return 2
            print(f"note: circuitry.store imports but could not be attached ({err!r}); store cells skipped",
                  file=sys.stderr)
        else:
            store_lib = "circuitry+store"
            store_cells: list[Cell] = []

            def add(path: str, lib: str, body: str, is_async: bool = False, **kw: Any) -> None:
                opts = {k: kw.pop(k) for k in ("comparable", "reset", "check") if k in kw}
                if path in STORE_PATHS:
                    store_cells.append(Cell(path, lib, body, {"work": work, **kw}, is_async, **opts))

            add_circuitry(add, reg, store_lib, loop)
            cells += store_cells

        t0 = time.perf_counter()
        load0 = os.getloadavg()[0]
        print(f"timing {len(cells)} cells, {repeats} repeats, N={n_base:,} (sync success)...",
              file=sys.stderr)
        run_all(cells, repeats, n_base, loop)
        elapsed = time.perf_counter() - t0

    bad = [f"{c.lib}:{c.path}" for c in cells if c.check is not None and not c.check()]
    lines = ["## Hot path: overhead per call (ns)", "", *[f"- {m}" for m in machine()],
             f"- run: {repeats} repeats, N = {n_base:,} calls per sync-success cell (see PATHS for the "
             f"others), {elapsed:.0f} s, load average {load0:.2f} -> {os.getloadavg()[0]:.2f}", ""]
    lines += report(cells, store_lib)
    if bad:
        lines += ["", f"**WARNING: breakers not in the assumed state after the run: {', '.join(bad)}**"]
    print("\n".join(lines))
    loop.close()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
