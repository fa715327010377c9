#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian machine, then runs lint, types and the whole suite:
# Debian's Node.js, npm and Chromium when missing (the tab's node unit tests and its browser test), a
# virtualenv with the test extras (torch pinned to the CPU build by constraints.txt) and playwright-core.
# Runs ruff, mypy, the tab's node unit tests and pytest, whose tests/test_packaging.py builds the wheel
# and the sdist and installs the wheel into a fresh virtualenv. With ATTNVIZ_TEST_LATEST_TORCH=1, also
# scripts/test_torch_latest.sh: the capture paths and a fit again on the newest torch installable here.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=()
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
[ -x /usr/bin/chromium ] || packages+=(chromium)
if [ ${#packages[@]} -gt 0 ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -c constraints.txt -e ".[test,dev]"
# timm declares torchvision, whose wheels cannot load beside the CPU torch (and a broken torchvision
# breaks `import pytorch_lightning`): remove it; the tests give timm a labelled stand-in.
.venv/bin/pip uninstall -q -y torchvision
npm --prefix tests/e2e ci --silent --no-audit --no-fund
.venv/bin/ruff check .
.venv/bin/mypy  # what and how strictly: [tool.mypy] in pyproject.toml
bash scripts/test_js.sh
ATTNVIZ_BROWSER_TEST=required .venv/bin/python -m pytest -q
if [ "${ATTNVIZ_TEST_LATEST_TORCH:-0}" = 1 ]; then
  bash scripts/test_torch_latest.sh
fi
