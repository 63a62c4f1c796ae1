"""The fault campaign: a seeded random sequence of faults against a real oversipd.

`python -m soak --seconds 120 --seed N` (with `tests/` on sys.path; `make soak`
does that) injects faults one step at a time and checks the invariants of
docs/RELIABILITY.md after every step and at the end.
"""
