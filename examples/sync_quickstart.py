"""Sync quickstart: protect a flaky function, watch the circuit open, fall back, recover."""

from __future__ import annotations

import time

from circuitry import CircuitOpenError, circuit

attempts = {"n": 0}


@circuit("weather_api", failure_threshold=3, recovery_timeout=1.0, on=ConnectionError)
def get_forecast(city: str) -> str:
    attempts["n"] += 1
    if attempts["n"] <= 3:  # the service is down for a while
        raise ConnectionError("weather service unreachable")
    return f"sunny in {city}"


def main() -> None:
    for _ in range(6):
        try:
            print(get_forecast("Lisbon"))
        except ConnectionError as exc:
            print("failed:", exc)
        except CircuitOpenError as exc:
            print(f"refused fast: circuit {exc.name!r} is {exc.state}, retry in {exc.retry_after:.2f}s")
    time.sleep(1.05)  # the open period ends; the next call is a probe
    print(get_forecast("Lisbon"))  # the service is back: the probe closes the circuit
    print(get_forecast("Lisbon"))
    print("state:", get_forecast.circuit.breaker.state.value)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
