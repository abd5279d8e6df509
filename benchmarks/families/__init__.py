"""Benchmark landscape families (``api.py``), each written independently of the search code."""
