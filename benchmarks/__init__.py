"""Benchmarks for samtune: step cost, perturbation overhead, memory (cost.py) and accuracy (accuracy.py).

Not part of the test run. Entry point: `python benchmarks/run.py` (see README.md).
"""
