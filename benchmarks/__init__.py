"""Benchmarks of the adapter kinds; run them as modules, e.g. ``python -m benchmarks.speed``."""
