"""Benchmarks for samtune: step cost (cost.py), perturbation overhead (perturbation.py), memory (memory.py)
and accuracy (accuracy.py).

Not part of the test run. Entry point: `python benchmarks/run.py` (see README.md).
"""
