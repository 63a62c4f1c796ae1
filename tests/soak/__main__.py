"""`python -m soak [--seconds S] [--seed N] [--trace]` (tests/ on sys.path): run the fault campaign."""

from __future__ import annotations

import argparse
import random
import sys

from .report import run_campaign


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak", description="Fault campaign against a real oversipd.")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to inject faults (default 120)")
    parser.add_argument("--seed", type=int, default=None, help="replay the sequence of this seed")
    parser.add_argument("--trace", action="store_true", help="print each step and its fault as it starts")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    result = run_campaign(seed, args.seconds, trace=args.trace)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
