#!/usr/bin/env bash
# Every benchmark, one after the other, printing markdown tables (docs/benchmarks.md keeps the latest).
# Run on an otherwise idle machine: ratios are measured within each run, but load skews them.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
"$py" benchmarks/bench_capture.py
echo
"$py" benchmarks/bench_scale.py
echo
"$py" benchmarks/bench_callback.py
echo
"$py" benchmarks/bench_fit.py
echo
"$py" benchmarks/bench_roles.py
