"""The developer kit: fakes, vendor stand-ins, sample data and service helpers that the tests, the
demo (`scripts/demo.py`, `scripts/seed.py`) and the benchmarks (`bench/`) share. It is not part of the
product: the wheel and the image ship only `worker`, `connectors` and `schemas`, and neither of those
imports it (.importlinter)."""
