"""The run directory as persistent state: file names, the lock, state, journal, results.

Every runner (local, replay, cluster) writes through it; ``report/`` only reads it. It
decides nothing.
"""
