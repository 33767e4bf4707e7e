# syntax=docker/dockerfile:1
#
# JetBridge's one image. It serves any of the functions (chosen by environment,
# as functions-framework does), runs the `jetbridge` CLI (the chart's
# `jetbridge db upgrade` Job), and is the resource image of get and put steps
# (JETBRIDGE_RESOURCE_IMAGE): the built-in resource types live at
# /opt/resource-types/<type>/.
#
#   docker build -t ghcr.io/jetbridge/jetbridge:0.1.0 .
#
#   FUNCTION_SOURCE=functions/trigger/main.py      FUNCTION_TARGET=handle   (CloudEvents)
#   FUNCTION_SOURCE=functions/trigger/main.py      FUNCTION_TARGET=webhook  FUNCTION_SIGNATURE_TYPE=http
#   FUNCTION_SOURCE=functions/step_runner/main.py  FUNCTION_TARGET=handle
#   FUNCTION_SOURCE=functions/reaper/main.py       FUNCTION_TARGET=handle
#
# tests/test_dockerfile.py lints this file with hadolint and checks the stages,
# the user and the entry points against the repository.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: build JetBridge's wheel and install it with its dependencies into a venv.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY functions/ functions/
# The dependencies come as wheels; the venv is copied whole into the final stage.
RUN python -m venv /opt/jetbridge \
 && /opt/jetbridge/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/jetbridge/bin/pip install /tmp/wheels/jetbridge-*.whl

# ---- final: the runtime only; no compiler, no build tools, no pip cache.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="jetbridge" \
      org.opencontainers.image.description="JetBridge functions, CLI and built-in resource types" \
      org.opencontainers.image.licenses="Apache-2.0"
# git and ssh for the built-in git resource type; Debian's security updates come with
# each rebuild, so the packages are not pinned to one revision.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home --shell /usr/sbin/nologin nonroot
COPY --from=builder /opt/jetbridge /opt/jetbridge
# Built-in resource types: one folder per type holding check, in and out.
COPY --chmod=0755 shared/resources/git/ /opt/resource-types/git/
COPY --chmod=0755 shared/resources/gcs/ /opt/resource-types/gcs/
COPY --chmod=0755 shared/resources/time/ /opt/resource-types/time/
WORKDIR /app
COPY functions/ functions/
ENV PATH=/opt/jetbridge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    FUNCTION_TARGET=handle \
    FUNCTION_SIGNATURE_TYPE=cloudevent
EXPOSE 8080
# 65532 is the "nonroot" user of distroless images, and the user every step pod runs as.
USER 65532:65532
CMD ["functions-framework"]
