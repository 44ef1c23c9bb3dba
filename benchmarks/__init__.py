"""Benchmarks: ``python -m benchmarks.<name>``. Speed goals live here, never in tests."""
