# syntax=docker/dockerfile:1
# The gateway image. Build from the repository root (BuildKit reads the ignore file
# gateway.Dockerfile.dockerignore next to this file):
#   docker build -f k8s/images/gateway.Dockerfile -t <acr>.azurecr.io/scoregate/gateway:<tag> .
#
# Base images are pinned by exact tag; pin them by digest (FROM image:tag@sha256:…) when
# you build, with the digest your registry reports for that tag.

FROM python:3.12.10-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
# The gateway extra's lock: every package at one version, every file by its SHA-256
# (`make lock`; tests/k8s/test_image_locks.py fails when it falls behind pyproject.toml).
COPY k8s/images/requirements/gateway.txt ./requirements.txt
COPY serving ./serving
COPY gateway ./gateway
COPY certs ./certs
# A virtual environment that the final stage copies whole, with the gateway's extra only
# (no scikit-learn, NumPy or torch; the wheel leaves the development tools out); pip
# itself is removed from it once the install is done (nothing installs at run time).
RUN python -m venv /opt/scoregate \
    && /opt/scoregate/bin/pip install --no-cache-dir --require-hashes -r requirements.txt \
    && /opt/scoregate/bin/pip install --no-cache-dir --no-deps . \
    && /opt/scoregate/bin/pip uninstall --yes pip

FROM python:3.12.10-slim-bookworm
# A numeric, unprivileged user (UID and GID 10001, no shell, no home) that matches the pods'
# runAsUser; the root filesystem is mounted read-only on AKS.
RUN groupadd --system --gid 10001 scoregate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin scoregate
COPY --from=build /opt/scoregate /opt/scoregate
ENV PATH=/opt/scoregate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8443
# Docker's own health check (Kubernetes uses the pod's probes instead): liveness over
# loopback without curl in the image. The certificate names the public host, not
# 127.0.0.1, so this one local request does not verify it; it sends no credential.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; u.urlopen('https://127.0.0.1:%s/v2/health/live' % os.environ.get('SCOREGATE_PORT', '8443'), context=c, timeout=3)"]
ENTRYPOINT ["scoregate"]
CMD ["serve"]
