#!/usr/bin/env bash
# Builds the peer virtualenvs the benchmark driver runs in subprocesses.
#
#   bash benchmarks/setup_venvs.sh [VENV_ROOT]   (default /work/venvs)
#
# Creates VENV_ROOT/{fedjax,torch,flower}; each is independent of the
# project's own environment, and none lives inside the repository.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="${1:-/work/venvs}"
PY="${PYTHON:-python3.11}"
mkdir -p "$ROOT"

make_venv() {  # name
  if [[ ! -x "$ROOT/$1/bin/python" ]]; then
    "$PY" -m venv "$ROOT/$1"
  fi
  "$ROOT/$1/bin/python" -m pip install -q --upgrade pip wheel
}

check_torch_cpu() {  # name
  "$ROOT/$1/bin/python" - <<'PY'
import torch
assert torch.version.cuda is None, f'CUDA build installed: {torch.__version__}'
print('torch', torch.__version__, '(CPU build, cuda=None)')
PY
}

echo "== fedjax venv"
make_venv fedjax
"$ROOT/fedjax/bin/python" -m pip install -q -r "$HERE/requirements-fedjax.txt"
"$ROOT/fedjax/bin/python" -m pip install -q --no-deps fedjax==0.0.17
"$ROOT/fedjax/bin/python" -c 'import fedjax, jax; import importlib.metadata as m; print("fedjax", m.version("fedjax"), "jax", jax.__version__)'

echo "== torch venv"
make_venv torch
"$ROOT/torch/bin/python" -m pip install -q -r "$HERE/requirements-torch.txt"
check_torch_cpu torch

echo "== flower venv"
make_venv flower
"$ROOT/flower/bin/python" -m pip install -q -r "$HERE/requirements-flower.txt"
check_torch_cpu flower
"$ROOT/flower/bin/python" -c 'import flwr, ray; print("flwr", flwr.__version__, "ray", ray.__version__)'
du -sh "$ROOT"/* || true
