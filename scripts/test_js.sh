#!/usr/bin/env bash
# Node unit tests of the Attention tab's pure modules (tests/js), on records the Python encoder makes
# here with the project's virtualenv. No npm dependencies: node's built-in test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
fixtures=$(mktemp -d)
trap 'rm -rf "$fixtures"' EXIT
"$python" tests/js/make_fixtures.py "$fixtures"
# Named files, not the folder: node 21 and later read a folder argument as a module path.
ATTNVIZ_JS_FIXTURES="$fixtures" node --test tests/js/*.test.mjs
