# Arrowsmith as a container (e.g. a sidecar): build the wheel, then a slim runtime image.
# Serve a model mounted at /models/model:
#   docker run -p 8081:8081 -p 8080:8080 -v $PWD/examples/wine/model:/models/model:ro arrowsmith
FROM python:3.11-slim-bookworm AS build
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

FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
# The wheel brings MLflow, grpcio, pyarrow, pandas; scikit-learn and skops load sklearn
# models. Models of other flavors need their libraries in an image built on this one.
RUN pip install --no-cache-dir /wheels/*.whl scikit-learn==1.9.1 skops==0.16.0 \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 arrowsmith
USER 10001
ENV ARROWSMITH_HOST=0.0.0.0 \
    ARROWSMITH_GRPC_PORT=8081 \
    ARROWSMITH_HTTP_PORT=8080 \
    ARROWSMITH_METRICS_PORT=8082 \
    ARROWSMITH_MODEL_URI=/models/model
EXPOSE 8081 8080 8082
ENTRYPOINT ["arrowsmith", "serve"]
