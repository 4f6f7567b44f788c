#!/usr/bin/env bash
# Makes TRL's own virtual environment, apart from leankd's, so the causal-LM peer (benchmarks/lm_peers.py) runs the
# PyPI release exactly as a user would get it and nothing it pulls in can touch leankd's venv.
#
#   bash benchmarks/peers/setup_trl_env.sh [VENV_PATH]   (default: benchmarks/peers/.venv-trl)
#
# torch and transformers are installed first and pinned again alongside trl so pip never picks another torch or
# transformers than leankd's (the comparison assumes the same kernels). TRL_SPEC picks the TRL release (default: the
# newest checked to work with these pins); PYTHON the interpreter (default python3); TORCH_SPEC /
# TRANSFORMERS_SPEC override the pins (keep them equal to leankd's venv).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv-trl}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.14.1}"
transformers_spec="${TRANSFORMERS_SPEC:-transformers==5.25.*}"
trl_spec="${TRL_SPEC:-trl==1.16.0}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --quiet)
"${pip[@]}" "$torch_spec" "$transformers_spec"
"${pip[@]}" "$trl_spec" "$torch_spec" "$transformers_spec"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md

import datasets, torch, transformers, trl  # noqa: F401  (import check)
print(f"trl {trl.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"datasets {md.version('datasets')}, accelerate {md.version('accelerate')}")
PY
