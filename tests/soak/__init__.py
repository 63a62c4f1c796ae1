"""The fault campaign: a seeded random sequence of faults against a real oversipd.

`make soak SOAK_SECONDS=120 SOAK_SEED=N` (that is `python -m soak --seconds 120
--seed N` with `tests/` on sys.path) injects faults one step at a time and checks the invariants of
docs/RELIABILITY.md after every step and at the end.
"""
