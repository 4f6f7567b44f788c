#!/usr/bin/env bash
# Makes torchdistill 1.1.5's own virtual environment, apart from leankd's, so the peer runs the
# PyPI release exactly as a user would get it and nothing it pulls in can touch leankd's venv.
#
#   bash benchmarks/peers/setup_torchdistill_env.sh [VENV_PATH]   (default: benchmarks/peers/.venv-torchdistill)
#
# torch/torchvision are installed first and pinned again alongside torchdistill, whose metadata asks only
# torch>=2.12.0, torchvision>=0.27.0, numpy, pyyaml>=6.0, scipy, cython: the pins keep pip from
# choosing another torch. PYTHON picks the interpreter (default python3); TORCH_SPEC/TORCHVISION_SPEC
# override the pins (e.g. on a machine whose local torch differs).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv-torchdistill}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.14.1}"
tv_spec="${TORCHVISION_SPEC:-torchvision==0.29.1}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --quiet)
"${pip[@]}" "$torch_spec" "$tv_spec"
"${pip[@]}" "torchdistill==1.1.5" "$torch_spec" "$tv_spec"
"$venv/bin/python" - <<'PY'
import torch, torchvision, torchdistill
print(f"torchdistill {torchdistill.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}")
assert torchdistill.__version__ == "1.1.5"
PY
