#
# MAGNET serving: the API image (CPU, no torch).
#
#   docker build -t magnet-serving .                                   # bundle mounted at run time
#   docker build -t magnet-serving --build-arg BUNDLE_DIR=bundles/v1 .  # bundle baked in
#   docker run -p 8000:8000 -v "$PWD/bundles/v1:/bundle:ro" magnet-serving
#
# Stage 1 installs the serving half of the project into /opt/venv with .ci/install.sh
# (MAGNET_PROFILE=serve: requirements/serve.txt, then the package with --no-deps), so no
# torch, torch-geometric or sentence-transformers: service/ imports none of them. Stage 2
# is a slim runtime that copies the venv (same base image, same path: a venv is not
# relocatable). Training runs in the other image (Dockerfile.train).
#
# Builds with the classic builder and with BuildKit's built-in Dockerfile frontend (no
# `# syntax=` line, no RUN --mount / COPY --chmod), so no frontend image is pulled.
# PYTHON_IMAGE: any Debian-based image with python3 -m venv, `python` and groupadd/useradd
# (deploy/smoke.sh builds one from Debian packages for machines without Docker Hub).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

WORKDIR /src
# Only what the install needs, so edits to tests/docs/deploy do not rebuild this layer.
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY .ci/install.sh .ci/install.sh
COPY model ./model
COPY offline ./offline
COPY service ./service

# Serving dependencies only, non-editable install into /opt/venv; `magnet serve` must
# start (its --help) and torch must be absent (install.sh checks).
RUN MAGNET_PROFILE=serve MAGNET_EXTRAS="" bash .ci/install.sh \
 && magnet serve --help >/dev/null \
 && python -m pip uninstall --quiet --yes pip setuptools

# -------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

# libgomp: OpenMP runtime for faiss when its wheel does not vendor it.
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

# A bundle baked in at build time; the default is a placeholder directory holding a
# README (no manifest -> /readyz stays 503 until a real bundle is mounted over /bundle).
ARG BUNDLE_DIR=deploy/no-bundle
COPY --chown=magnet:magnet ${BUNDLE_DIR}/ /bundle/

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MAGNET_BUNDLE=/bundle \
    MAGNET_HOST=0.0.0.0 \
    MAGNET_WORKERS=1

USER 10001:10001
WORKDIR /home/magnet
EXPOSE 8000

# /healthz answers 200 while the process lives (readiness is /readyz, for orchestrators).
# MAGNET_PORT moves the listening port (host networking, several containers on one host).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MAGNET_PORT', '8000'), timeout=4).status == 200 else 1)"]

# service.server's entry point: uvicorn on MAGNET_HOST:MAGNET_PORT with MAGNET_WORKERS
# processes, every setting (MAGNET_GRACEFUL_SHUTDOWN_S included) read by service/settings.py
# like `magnet serve` reads them. Unlike `magnet serve` it starts without a loadable bundle:
# the process stays up, /healthz 200 and /readyz 503, until POST /admin/reload or a restart
# finds one. Each worker holds its own copy of the bundle, and POST /admin/reload reaches
# only one of them, so keep 1 where bundles are swapped by reload (scale with
# containers/replicas instead).
CMD ["python", "-m", "service.server"]
