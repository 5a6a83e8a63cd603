# syntax=docker/dockerfile:1
# OpenHQM image: `openhqm serve` by default; `listener` or `worker` as the command for split deployments.
#   docker build -t openhqm .                       # every extra: the brokers, otel, granian
#   docker build --build-arg EXTRAS=redis -t openhqm:redis .
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: wheels for openhqm and everything it needs --------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=all
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN spec="."; if [ -n "${EXTRAS}" ]; then spec=".[${EXTRAS}]"; fi; \
    pip wheel --wheel-dir /wheels "${spec}"

# --- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS=all
LABEL org.opencontainers.image.title="openhqm" \
      org.opencontainers.image.description="A durable bridge between HTTP and message queues" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPENHQM_SERVER__HOST=0.0.0.0 \
    OPENHQM_DATA_DIR=/var/lib/openhqm

RUN groupadd --system --gid 10001 openhqm \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/openhqm --no-create-home \
      --shell /usr/sbin/nologin openhqm \
 && mkdir -p /var/lib/openhqm \
 && chown 10001:10001 /var/lib/openhqm

# Install from the builder's wheels only: no compiler and no index in the final image. The only
# wheels there are the ones the builder resolved, so the versions are pinned by construction.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    spec="openhqm"; if [ -n "${EXTRAS}" ]; then spec="openhqm[${EXTRAS}]"; fi; \
    pip install --no-index --find-links=/wheels "${spec}"

COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/openhqm-healthcheck

USER 10001:10001
WORKDIR /var/lib/openhqm
VOLUME ["/var/lib/openhqm"]
# 8000: listener HTTP API (/api/v1, /health, /ready, /metrics); 8081: worker health and metrics
# (`openhqm worker` serves them when worker.health_port / OPENHQM_WORKER__HEALTH_PORT is set).
EXPOSE 8000 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/openhqm-healthcheck"]
# SIGTERM (docker stop) drains workers for worker.shutdown_timeout_s: give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["openhqm"]
CMD ["serve"]
