"""The ``circuitry`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="circuitry", description="Circuit breakers that remember.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a flaky service behind a breaker and watch it work")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the simulated service")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from circuitry._demo import run_demo

        asyncio.run(run_demo(seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
