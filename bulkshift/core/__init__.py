"""The sorting engine: pure functions of arrays, no network and no files.

Label Studio adapters (``ml_backend``, ``bulk_shift_plugin``) and the benchmark
(``scripts/benchmark.py``) all call these modules, so what the benchmark measures is
what a person gets.
"""
