# syntax=docker/dockerfile:1
# One image for every role: the command picks it (docs/deploy.md).
#   python -m foretell.runtime            all four services in one process (default)
#   python -m foretell.dataset            also foretell.training, foretell.recommendation, foretell.forecast_query
#   python -m foretell.training.worker DIR a training job (what the Kubernetes launcher runs in a Job)
#   foretell ...                          the CLI
#
# CPU (default):  docker build -t foretell:cpu .
# CUDA:           docker build -t foretell:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# CUDA torch wheels bring their own CUDA runtime libraries (nvidia-* wheels); the node's driver is mounted
# by the NVIDIA container toolkit, so both variants share the slim base.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/foretell
ENV PATH=/opt/foretell/bin:$PATH
# torch first and from its own index: the largest layer, and the one the variants differ in.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services services
COPY clients/python/foretell clients/python/foretell
# Every dependency ships manylinux wheels (grpcio, psycopg[binary], numpy, scipy), so no compiler is needed.
RUN pip install . && python -c "import foretell.runtime.server, foretell.training.worker, torch"

FROM ${PYTHON_IMAGE} AS runtime
# Numeric UID so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 foretell \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin foretell \
 && mkdir -p /var/lib/foretell && chown 10001:10001 /var/lib/foretell
COPY --from=build /opt/foretell /opt/foretell
# HOME and MPLCONFIGDIR point at /tmp: the root filesystem is read-only in Kubernetes and /tmp is an emptyDir.
ENV PATH=/opt/foretell/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    FORETELL_HOST=0.0.0.0 \
    FORETELL_PORT=50051 \
    FORETELL_DATA_DIR=/var/lib/foretell
USER 10001:10001
WORKDIR /var/lib/foretell
EXPOSE 50051
CMD ["python", "-m", "foretell.runtime"]
