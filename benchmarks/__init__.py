"""Benchmarks: each script measures against a named baseline in the same run (see README.md here)."""
