#!/usr/bin/env bash
# Installs MAGNET serving into the active Python environment.
# Used by .ci/run and by both Dockerfiles, so CI exercises the images' install path.
#   MAGNET_PROFILE   "full" (default): serving + training, what `pip install magnet-serving` gives;
#                    "serve": only what service/ needs (requirements/serve.txt) and the package
#                    itself with --no-deps: no torch (the API image)
#   TORCH_VERSION    torch release to pin first (default 2.13.0, the CPU build; full only)
#   TORCH_INDEX_URL  optional extra index for torch (e.g. a CPU or CUDA wheel index)
#   MAGNET_EXTRAS    extras to install with the project (default "test"; "" for none; full only)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
torch_version="${TORCH_VERSION:-2.13.0}"
extras="${MAGNET_EXTRAS-test}"
profile="${MAGNET_PROFILE:-full}"

python -m pip install --quiet --upgrade pip
case "$profile" in
  serve)
    python -m pip install --quiet -r "${here}/requirements/serve.txt"
    # --no-deps: the project's own dependency list is the full one (torch included)
    python -m pip install --quiet --no-deps ${MAGNET_EDITABLE:+-e} "${here}"
    python -c "import service.app, faiss; print('installed (serve): faiss', faiss.__version__)"
    if python -c "import torch" 2>/dev/null; then
      echo "error: the serve profile must not install torch" >&2
      exit 1
    fi
    ;;
  full)
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
    ;;
  *)
    echo "error: MAGNET_PROFILE must be 'full' or 'serve', got '${profile}'" >&2
    exit 1
    ;;
esac
