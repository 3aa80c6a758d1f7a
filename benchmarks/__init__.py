"""Benchmarks: they print figures and compare with a baseline taken in the same run."""
