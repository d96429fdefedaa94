"""Built-in apps: deterministic computations on one slice, runnable as `python -m ...`."""
