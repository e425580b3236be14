# syntax=docker/dockerfile:1
# The CPU scorer image (scikit-learn runtime). Build from the repository root (BuildKit
# reads scorer-cpu.Dockerfile.dockerignore next to this file):
#   docker build -f k8s/images/scorer-cpu.Dockerfile -t <acr>.azurecr.io/scoregate/scorer-cpu:<tag> .
# Models are not in this image: they come from a models image (models.Dockerfile).
#
# Base images are pinned by exact tag; pin them by digest (FROM image:tag@sha256:…) when
# you build, with the digest your registry reports for that tag.

FROM python:3.12.10-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
# The scorer extra's lock, hash-pinned (`make lock`).
COPY k8s/images/requirements/scorer.txt ./requirements.txt
COPY serving ./serving
COPY scorer ./scorer
# The scorer's extra only: no gateway, no torch; the wheel leaves demo training out.
RUN python -m venv /opt/scoregate \
    && /opt/scoregate/bin/pip install --no-cache-dir --require-hashes -r requirements.txt \
    && /opt/scoregate/bin/pip install --no-cache-dir --no-deps . \
    && /opt/scoregate/bin/pip uninstall --yes pip

FROM python:3.12.10-slim-bookworm
RUN groupadd --system --gid 10001 scoregate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin scoregate
COPY --from=build /opt/scoregate /opt/scoregate
ENV PATH=/opt/scoregate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9001
# Docker's own health check (Kubernetes uses the pod's probes instead), without curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('SCOREGATE_SCORER_PORT', '9001'), timeout=3)"]
ENTRYPOINT ["python", "-m", "scorer"]
CMD ["serve"]
