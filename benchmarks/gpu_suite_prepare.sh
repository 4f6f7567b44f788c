#!/usr/bin/env bash
# Prepares what the GPU proof suite (benchmarks/gpu_suite.py) needs on a lent GPU machine that has no network:
#   .whl/  the wheels that machine lacks, for CPython 3.12 x86-64, ONE version each (installed there offline with
#          pip install --no-index --no-deps --target /tmp/site .whl/*.whl; see benchmarks/gpu_suite.sh)
#   .gpu/  the data: the CIFAR-10 JPEG tarball (19 MB; the decoded .pt would be 184 MB) and Tiny Shakespeare
# then checks that what travels there — tracked files + untracked files git does not ignore + these two folders —
# stays under the 64 MiB carry limit, and fails loudly otherwise. Both folders are ignored by git.
#
#   bash benchmarks/gpu_suite_prepare.sh           (PYTHON=... picks the pip that downloads; default python3)
#
# Why these wheels: the device has torch 2.11, torchvision 0.26, transformers, timm, typer, rich, psutil,
# safetensors, torchmetrics, matplotlib, pyyaml, numpy, scipy, cython (see README "GPU proof suite"); leankd also
# needs pydantic (recipes), optuna (leankd.search), soundfile (audio), and the KD-speed peer needs torchdistill 1.1.5.
# torchdistill's metadata asks torch>=2.12, which --no-deps ignores: the suite's smoke run on torch 2.11 checks it runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
shared="${SHARED:-$root/../shared/datasets}"
limit_mib=64

# ---- wheels: name==version as tested with leankd (the versions of its dev venv) ----------------------------------
wheels=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5  # recipes and reports
  optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3 colorlog==6.12.0           # leankd search
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12                                             # keyword-spotting audio
  nvidia-ml-py==13.615.71                                                                   # GPU energy (NVML)
  torchdistill==1.1.5                                                                       # the KD-speed peer
)
mkdir -p .whl
for spec in "${wheels[@]}"; do
  name="${spec%%==*}"; version="${spec##*==}"
  pattern="$(echo "$name" | tr '-' '_')-$version-"
  if ls .whl/ 2>/dev/null | grep -qi "^$pattern"; then continue; fi
  echo "downloading $spec"
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
done
# one version of each package: two wheels of one name would make the offline install's result depend on order
dups="$(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
if [ -n "$dups" ]; then
  echo "ERROR: .whl/ holds several versions of: $dups — delete all but one (the pinned one above)" >&2; exit 1
fi

# ---- data ----------------------------------------------------------------------------------------------------------
mkdir -p .gpu
for f in cifar10-jpeg.tar.gz text/tinyshakespeare/input.txt; do
  src="$shared/$f"; dst=".gpu/$(basename "$f")"
  [ -f "$src" ] || { echo "ERROR: $src not found: set SHARED to the folder holding the datasets" >&2; exit 1; }
  [ -f "$dst" ] && cmp -s "$src" "$dst" || cp "$src" "$dst"
done
echo "0bfcb68717a0ecb0d51ed61034906a773d48d424d94b766a46d7d1c55702a4d9  .gpu/cifar10-jpeg.tar.gz" | sha256sum -c --quiet

# ---- size check: everything that travels to the device --------------------------------------------------------------
bytes() { du -cb --files0-from=- 2>/dev/null | awk 'END {print ($1 == "" ? 0 : $1)}'; }  # one total, NUL-separated names
tree_bytes="$(git ls-files -z --cached --others --exclude-standard | bytes)"
carry_bytes="$(printf '%s\0' .whl .gpu | bytes)"
total=$((tree_bytes + carry_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
echo "working tree $(mib "$tree_bytes") MiB + .whl $(mib "$(printf '%s\0' .whl | bytes)") MiB +" \
     ".gpu $(mib "$(printf '%s\0' .gpu | bytes)") MiB = $(mib "$total") MiB (limit $limit_mib MiB)"
if [ "$total" -ge $((limit_mib * 1048576)) ]; then
  echo "ERROR: $(mib "$total") MiB would not fit the device's $limit_mib MiB carry limit: remove untracked files" \
       "or wheels/data the suite does not need" >&2
  exit 1
fi
ls .whl
