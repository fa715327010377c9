#!/usr/bin/env bash
# A second run, on the newest torch pip installs here (2.14.1 by default, a CUDA build that runs on the
# CPU), of the part of the suite that covers every capture path: SDPA, nn.MultiheadAttention and
# nn.Transformer*, FlexAttention eager and compiled, timm and Hugging Face models, odd layouts, compile
# and precision, the health probes, plus one end-to-end fit read back from TensorBoard's event files.
# Its own virtualenv (.venv-torch-latest), so the main .venv keeps the pinned CPU build.
#   ATTNVIZ_LATEST_TORCH=2.15.0 bash scripts/test_torch_latest.sh   # another release
set -euo pipefail
cd "$(dirname "$0")/.."
version=${ATTNVIZ_LATEST_TORCH:-2.14.1}
venv=${ATTNVIZ_LATEST_VENV:-.venv-torch-latest}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
echo "torch==$version" > "$venv/constraints.txt"
if [ "$("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)" != "$version" ]; then
  "$venv/bin/pip" install -q -c "$venv/constraints.txt" "torch==$version"
fi
# With a CUDA build of torch, timm's torchvision resolves to the build made for it and imports.
"$venv/bin/pip" install -q -c "$venv/constraints.txt" -e ".[test]"
"$venv/bin/python" -c 'import torch, pytorch_lightning, timm; print("torch", torch.__version__)'
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_capture_*.py tests/test_layouts.py tests/test_compile_precision.py tests/test_health.py \
  "tests/test_callback.py::test_documented_tags_one_step_per_capture" \
  "tests/test_callback.py::test_training_is_bit_identical_with_and_without_the_callback"
