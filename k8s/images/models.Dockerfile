# syntax=docker/dockerfile:1
# A model repository as an image: the scorer pods' init container copies it into an
# emptyDir that the scorer mounts read-only. Versioned and pinned by digest like the code;
# the scorer still checks each artifact's SHA-256 against its model-settings.toml before it
# deserialises anything, so a swapped artifact is refused at load.
#
# The build context is the repository folder itself (one sub-folder per model), e.g. the
# demo models:
#   python -m scorer train-demo --repository var/models
#   docker build -f k8s/images/models.Dockerfile -t <acr>.azurecr.io/scoregate/models-cpu:<tag> var/models
#
# Base image pinned by exact tag; pin it by digest (FROM image:tag@sha256:…) when you build.

FROM python:3.12.10-slim-bookworm
# Read-only for everyone, owned by root: the copy runs as 10001 and cannot alter the source.
COPY --chmod=0444 . /opt/models/
RUN find /opt/models -type d -exec chmod 0555 {} +
USER 10001:10001
# Runs once and exits: there is nothing to health-check.
HEALTHCHECK NONE
# The copy runs as the pod runs it: UID 10001, no capabilities, into an emptyDir owned by
# root with the fsGroup's group (mode 2777). It changes nothing it does not own: no mode,
# owner or time is copied (--no-preserve=all; Python's copytree ended with a chmod of the
# volume's root, refused to UID 10001, and the pod never started), and files a previous
# run left (a restarted pod) are replaced, not written into (--remove-destination).
# Tested under setpriv against the rendered Deployment (tests/k8s/test_image_installs.py).
ENTRYPOINT ["cp", "-R", "--no-preserve=all", "--remove-destination", "/opt/models/."]
CMD ["/models"]
