#!/usr/bin/env bash
# The GPU proof suite as one short device command (README "GPU proof suite"):
#   bash benchmarks/gpu_suite.sh "$OUT" [more benchmarks/gpu_suite.py options, e.g. --only fast_distill]
# Installs the wheels carried in .whl/ (benchmarks/gpu_suite_prepare.sh) offline into $SITE, then runs the suite
# with leankd from this source tree, its output teed into $OUT/gpu_suite.log. BUDGET (default 480 s) is the suite's
# own wall-clock limit: run it with a timeout of about BUDGET + 60 s (pip install, killing an overrunning part).
# PYTHON / SITE / WORK pick the interpreter (python3), the install folder (/tmp/site) and the work folder.
set -uo pipefail
out="${1:?usage: bash benchmarks/gpu_suite.sh OUT_FOLDER [gpu_suite.py options]}"
shift
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
python="${PYTHON:-python3}"
site="${SITE:-/tmp/site}"
mkdir -p "$out"
ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run bash benchmarks/gpu_suite_prepare.sh first" >&2; exit 2; }
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
  || { echo "the offline install of .whl/ into $site failed" >&2; exit 2; }
export PYTHONPATH="$site:src" PYTHONUNBUFFERED=1
"$python" benchmarks/gpu_suite.py --out "$out" --budget "${BUDGET:-480}" --work "${WORK:-/tmp/gpu_suite_work}" "$@" \
  2>&1 | tee "$out/gpu_suite.log"
exit "${PIPESTATUS[0]}"
