"""Benchmarks of the search methods on synthetic landscapes (see ``docs/benchmarks.md``)."""
