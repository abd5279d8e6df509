"""Surrogate models of the ``model`` search method: memory, throughput and acquisition."""
