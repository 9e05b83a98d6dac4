# Arrowsmith's image (`make image`): the wheel is built in a first stage, then installed in a
# slim runtime that runs as uid 10001 and works on a read-only root filesystem: it writes
# only to /tmp and /var/cache/arrowsmith (volumes; in Kubernetes, emptyDirs).
# Serve a model mounted at /models/model:
#   docker run --rm --read-only --tmpfs /tmp -p 8081:8081 -p 8080:8080 -p 8082:8082 \
#     -v "$PWD/examples/wine/model:/models/model:ro" arrowsmith:0.1.0 --name wine
#
# The base is pinned by tag and by the digest of that tag that docker-library/repo-info
# recorded (repos/python/remote/3.11.16-slim-bookworm.md, 2026-09-01); change both together.
ARG PYTHON_IMAGE=python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
RUN pip install --no-cache-dir maturin==1.16.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY rust rust
COPY python python
RUN maturin build --release --out /wheels

FROM ${PYTHON_IMAGE}
COPY --from=build /wheels /wheels
# The wheel brings MLflow, grpcio, pyarrow, pandas and uv (--env-manager uv); scikit-learn and
# skops load sklearn models. Models of other flavors need their libraries in an image built
# on this one, or their own environment (deploy/image/Dockerfile.model).
RUN pip install --no-cache-dir /wheels/*.whl scikit-learn==1.9.1 skops==0.16.0 \
    && rm -rf /wheels \
    && groupadd --gid 10001 arrowsmith \
    && useradd --no-log-init --no-create-home --uid 10001 --gid 10001 \
        --home-dir /var/cache/arrowsmith arrowsmith \
    && install -d -o 10001 -g 10001 /var/cache/arrowsmith
# HOME and XDG_CACHE_HOME point at the writable cache, so what MLflow, uv and the model
# libraries keep there does not need the root filesystem.
ENV HOME=/var/cache/arrowsmith \
    XDG_CACHE_HOME=/var/cache/arrowsmith \
    TMPDIR=/tmp \
    PYTHONUNBUFFERED=1 \
    ARROWSMITH_ENV_CACHE=/var/cache/arrowsmith/envs \
    ARROWSMITH_HOST=0.0.0.0 \
    ARROWSMITH_GRPC_PORT=8081 \
    ARROWSMITH_HTTP_PORT=8080 \
    ARROWSMITH_METRICS_PORT=8082 \
    ARROWSMITH_FLIGHT_PORT=8083 \
    ARROWSMITH_MODEL_URI=/models/model
VOLUME ["/tmp", "/var/cache/arrowsmith"]
USER 10001:10001
EXPOSE 8081 8080 8082 8083
# Health "" is SERVING once every model is loaded and warmed up, and not while draining.
# A server given --tls-cert is asked over TLS once ARROWSMITH_HEALTH_TLS_CA names its CA
# (and, under mutual TLS, ARROWSMITH_HEALTH_TLS_CLIENT_CERT and _CLIENT_KEY a client pair).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["arrowsmith", "health"]
ENTRYPOINT ["arrowsmith", "serve"]
