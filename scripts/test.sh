#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs lint and the whole test suite:
# a virtualenv with the test extras (torch pinned to the CPU build), Debian's Chromium and
# playwright-core for the Attention tab's browser test. Runs lint, the tab's node unit tests and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -c constraints.txt -e ".[test,dev]"
# timm declares torchvision, whose wheels cannot load beside the CPU torch (and a broken torchvision
# breaks `import pytorch_lightning`): remove it; the tests give timm a labelled stand-in.
.venv/bin/pip uninstall -q -y torchvision
if [ ! -x /usr/bin/chromium ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
fi
npm --prefix tests/e2e ci --silent --no-audit --no-fund
.venv/bin/ruff check .
bash scripts/test_js.sh
ATTNVIZ_BROWSER_TEST=required .venv/bin/python -m pytest -q
