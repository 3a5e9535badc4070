#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.py on a lent GPU machine, fetched HERE (the GPU machine reaches
# no registry) into .whl/ at the repo root (ignored through .git/info/exclude; carried by the
# device tool's `carry: [".whl"]`).
#
# The machine's image ('cuda': python3 3.12, torch 2.11 + CUDA, torchvision, numpy, scipy, numba,
# matplotlib, h5py, pyarrow, scikit-learn, tensorboard, ...) lacks the packages below, which the
# gpu_check run imports (read off sys.modules at the end of `gpu_check.py --device cpu --tiny`, minus
# the image's package list of 2026-11-17; row g, embed-tiles + ABMIL, adds none: timm, webdataset,
# omegaconf, pydantic below, tqdm on the image). timm and pandas are on the image but carried at
# constraints.txt's versions (hpc_pgo registers T2T-ViT in timm 1.0; pandas < 3). Versions: those of
# constraints.txt; scgpt as the Makefile pins it; DeepSpeed (a source release only) is built here
# into a pure-Python wheel without ops (DS_BUILD_OPS=0: the engine uses torch's Adam, no DeepSpeed op).
# torch stays the image's 2.11 (a CUDA torch wheel is far over the 64 MiB the tool carries).
#
#   bash benchmarks/gpu_wheels.sh          # then: the run command in benchmarks/gpu_check.py's docstring
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=.whl
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
mkdir -p "$OUT"

PACKAGES=(
  anndata annotated-types array-api-compat autograd braceexpand datasets dill donfig fsspec
  google-crc32c hjson httpcore2 httpx2 huggingface_hub legacy-api-wrap lifelines multiprocess
  natsort numcodecs omegaconf pandas pydantic pydantic_core pytz scanpy scverse-misc timm traitlets
  truststore typing-inspection typing_extensions tzdata webdataset zarr
  ipython ipython_pygments_lexers asttokens executing jedi parso matplotlib-inline pexpect
  ptyprocess prompt_toolkit pure_eval stack-data wcwidth
)
pins=()
for name in "${PACKAGES[@]}"; do
  pin=$(grep -i -m1 "^${name//[-_]/[-_]}==" constraints.txt || true)
  [ -n "$pin" ] || { echo "error: $name has no pin in constraints.txt" >&2; exit 2; }
  pins+=("$pin")
done
pins+=("scgpt==0.2.4")

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$OUT" "${pins[@]}"

# source releases only: built here into pure-Python wheels (DeepSpeed without ops: DS_BUILD_OPS=0)
for name in deepspeed autograd-gamma; do
  ls "$OUT"/"${name//-/_}"-*.whl >/dev/null 2>&1 && continue
  pin=$(grep -i -m1 "^${name//[-_]/[-_]}==" constraints.txt)
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "$pin"
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "$tmp"/*
  rm -rf "$tmp"
done
ls "$OUT" | wc -l | xargs echo "wheels:"
du -sh "$OUT"
