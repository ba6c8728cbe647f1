"""Benchmarks for Polder (DESIGN.md §8). Run them as modules from the repository root."""
