"""Benchmark of the offline plan: `python -m bench` (see bench/__main__.py)."""
