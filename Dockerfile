# syntax=docker/dockerfile:1
#
# MAGNET serving: the API image (CPU).
#
#   docker build -t magnet-serving .                                   # bundle mounted at run time
#   docker build -t magnet-serving --build-arg BUNDLE_DIR=bundles/v1 .  # bundle baked in
#   docker run -p 8000:8000 -v "$PWD/bundles/v1:/bundle:ro" magnet-serving
#
# Stage 1 installs the project into /opt/venv with .ci/install.sh, the same script CI
# runs, so CI exercises this install path. Stage 2 is a slim runtime that copies the
# venv (same base image, same path: a venv is not relocatable).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

# The CPU wheel index, so a plain `docker build` gets the CPU torch and not PyPI's CUDA
# build (gigabytes of nvidia-* wheels an API never uses). Empty = PyPI only.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Empty = the version .ci/install.sh pins.
ARG TORCH_VERSION=

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

WORKDIR /src
# Only what the install needs, so edits to tests/docs/deploy do not rebuild this layer.
COPY pyproject.toml README.md ./
COPY .ci/install.sh .ci/install.sh
COPY model ./model
COPY offline ./offline
COPY service ./service

# Runtime dependencies only (MAGNET_EXTRAS=""), non-editable install into /opt/venv.
RUN --mount=type=cache,target=/root/.cache/pip \
    MAGNET_EXTRAS="" \
    TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
    TORCH_VERSION="${TORCH_VERSION}" \
    bash .ci/install.sh \
 && magnet --help >/dev/null

# -------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

# libgomp: OpenMP runtime for faiss/torch when their wheels do not vendor it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# Fixed uid/gid so volumes and Kubernetes fsGroup/runAsUser can match (10001).
RUN groupadd --system --gid 10001 magnet \
 && useradd --system --uid 10001 --gid magnet --home-dir /home/magnet --create-home \
            --shell /usr/sbin/nologin magnet \
 && mkdir -p /bundles \
 && chown magnet:magnet /bundles

COPY --from=build /opt/venv /opt/venv
# The trainer script, so this image can also run the CPU `trainer` compose service.
COPY --chmod=0755 deploy/train_and_reload.sh /usr/local/bin/magnet-train-and-reload

# A bundle baked in at build time; the default is a placeholder directory holding a
# README (no manifest -> /readyz stays 503 until a real bundle is mounted over /bundle).
ARG BUNDLE_DIR=deploy/no-bundle
COPY --chown=magnet:magnet ${BUNDLE_DIR}/ /bundle/

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MAGNET_BUNDLE=/bundle \
    MAGNET_WORKERS=1

USER 10001:10001
WORKDIR /home/magnet
EXPOSE 8000

# /healthz answers 200 while the process lives (readiness is /readyz, for orchestrators).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

# uvicorn with the app factory (what `magnet serve` runs, minus its refusal to start
# without a bundle): settings come from MAGNET_* (MAGNET_BUNDLE, MAGNET_REDIS_URL, ...);
# without a loadable bundle the process stays up, /healthz 200 and /readyz 503, until
# POST /admin/reload or a restart finds one. MAGNET_WORKERS processes; each one holds its
# own copy of the bundle, and POST /admin/reload reaches only one of them, so keep 1
# where bundles are swapped by reload (scale with containers/replicas instead).
CMD ["sh", "-c", "exec uvicorn service.app:create_app_from_env --factory --host 0.0.0.0 --port 8000 --workers \"${MAGNET_WORKERS:-1}\" --no-access-log --timeout-graceful-shutdown 10"]
