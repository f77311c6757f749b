"""Benchmarks: figures printed, never asserted in timed tests (see README)."""
