"""Benchmark scripts (``python -m benchmarks.<name>``); each writes JSON + Markdown + PNG under
``benchmarks/results/`` with the machine, library versions, date and command (see ``_machine``)."""
