#!/usr/bin/env bash
# GPU figures (issue 16): SAM vs AdamW step time, peak memory and throughput on a ViT-B/16 and a
# BERT-base built from their configs, bf16. Under 8 minutes on one GPU; `--dry-run` checks the whole
# script on the CPU with tiny models, in seconds. See benchmarks/gpu.py for what it measures.
#
#   bash benchmarks/gpu.sh [--dry-run] [--out DIR]
#
# Python: $PYTHON, else the project's .venv, else python3; it needs torch (a CUDA build for the real
# run), transformers and accelerate, and this checkout (imported from the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import torch, transformers, accelerate" 2>/dev/null; then
  echo "benchmarks/gpu.sh: $PY cannot import torch, transformers and accelerate; run 'make install' (CPU) or" \
       "install a CUDA build of torch with the project (pip install -e .), or set PYTHON" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/gpu.py "$@"
