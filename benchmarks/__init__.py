"""Reproducible benchmarks: `python -m benchmarks NAME [options]`; each prints JSON lines."""
