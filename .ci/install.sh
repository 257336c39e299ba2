#!/usr/bin/env bash
# Installs MAGNET serving into the active Python environment.
# Used by .ci/run and by the Dockerfile, so CI exercises the image's install path.
#   TORCH_VERSION    torch release to pin first (default 2.13.0, the CPU build)
#   TORCH_INDEX_URL  optional extra index for torch (e.g. a CPU or CUDA wheel index)
#   MAGNET_EXTRAS    extras to install with the project (default "test"; "" for none)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
torch_version="${TORCH_VERSION:-2.13.0}"
extras="${MAGNET_EXTRAS-test}"

python -m pip install --quiet --upgrade pip
# torch first, pinned, so the rest resolves against it instead of pulling a CUDA build.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  python -m pip install --quiet "torch==${torch_version}" --extra-index-url "${TORCH_INDEX_URL}"
else
  python -m pip install --quiet "torch==${torch_version}"
fi
target="${here}"
[ -n "${extras}" ] && target="${here}[${extras}]"
python -m pip install --quiet ${MAGNET_EDITABLE:+-e} "${target}"
python -c "import torch, faiss, torch_geometric; print('installed: torch', torch.__version__, '| faiss', faiss.__version__, '| pyg', torch_geometric.__version__)"
