"""Test and benchmark support that ships with the package: seeded synthetic landscapes
(``synthetic.py``) for the replay backend, tests, benchmarks and demos."""
