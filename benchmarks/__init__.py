"""The harness's performance and fidelity benchmarks (docs/performance.md). Each script runs as
`PYTHONPATH=. .venv/bin/python benchmarks/NAME.py`, and with `--smoke` (every part at the smallest size, in seconds)
in tests/test_benchmarks.py; a helper module says `SMOKE = False` and is not run."""
