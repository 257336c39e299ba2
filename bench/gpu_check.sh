#!/usr/bin/env bash
# GPU path check (CI cannot run it): a few MAGNET and LightGCN epochs on ml100k with
# CUDA and bf16 mixed precision, printing seconds per epoch and the metrics.
# Usage (from the repo root, with ../shared beside it, on a machine with a GPU):
#   bash bench/gpu_check.sh [EPOCHS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
epochs="${1:-5}"
data="${MAGNET_ML100K:-../shared/datasets/ml100k/mmrec}"
[ -d "$data" ] || { echo "error: $data not found (set MAGNET_ML100K)"; exit 1; }
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('cuda:', torch.cuda.get_device_name(0))"
out="$(mktemp -d)"
for model in lightgcn magnet; do
  python -m offline train --data "$data" --out "$out/$model" --model "$model" --device cuda \
    --epochs "$epochs" --set progress=false --set mixed_precision=true
  python - "$out/$model/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"{m['model']:9s} device={m['device']} s/epoch={m['seconds_per_epoch']:.3f} "
      f"valid R@20={m['valid']['recall@20']:.4f} test R@20={m['test']['recall@20']:.4f} "
      f"test N@20={m['test']['ndcg@20']:.4f}")
PY
done
