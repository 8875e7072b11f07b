"""Benchmarks: every target is a ratio measured side by side in one run, never a timed test."""
