# syntax=docker/dockerfile:1
# The GPU scorer image (torch runtime) on NVIDIA's CUDA runtime base. Build from the
# repository root (BuildKit reads scorer-gpu.Dockerfile.dockerignore next to this file):
#   docker build -f k8s/images/scorer-gpu.Dockerfile -t <acr>.azurecr.io/scoregate/scorer-gpu:<tag> .
# The node supplies the driver (AKS GPU node pools install it); the CUDA user-space
# libraries come from this base and from torch's wheels. Models are not in this image:
# they come from a models image (models.Dockerfile).
#
# Base images are pinned by exact tag; pin them by digest (FROM image:tag@sha256:…) when
# you build, with the digest your registry reports for that tag.

FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's Python 3.12. Package versions follow the base image's release (the tag
# above pins it); exact apt pins would break the build each time the archive drops a
# superseded security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
# The torch extra's lock, hash-pinned, with the torch release the suite runs (`make lock`).
COPY k8s/images/requirements/torch.txt ./requirements.txt
COPY serving ./serving
COPY scorer ./scorer
# The torch extra only: no gateway, no scikit-learn; the wheel leaves demo training out.
RUN python3.12 -m venv /opt/scoregate \
    && /opt/scoregate/bin/pip install --no-cache-dir --require-hashes -r requirements.txt \
    && /opt/scoregate/bin/pip install --no-cache-dir --no-deps . \
    && /opt/scoregate/bin/pip uninstall --yes pip

FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
# The interpreter only: no venv module, no compiler, no pip.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3.12 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 scoregate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin scoregate
COPY --from=build /opt/scoregate /opt/scoregate
ENV PATH=/opt/scoregate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 9002
# Docker's own health check (Kubernetes uses the pod's probes instead), without curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('SCOREGATE_SCORER_PORT', '9002'), timeout=3)"]
ENTRYPOINT ["python", "-m", "scorer"]
CMD ["serve", "--port", "9002", "--runtime", "torch"]
