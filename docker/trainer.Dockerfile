# syntax=docker/dockerfile:1
# thermograd reference trainer. Build from the repository root:
#   docker build -f docker/trainer.Dockerfile --build-arg TORCH_VARIANT=cu128 -t thermograd/trainer:0.1.0-cu128 .
#   docker build -f docker/trainer.Dockerfile --build-arg TORCH_VARIANT=cpu   -t thermograd/trainer:0.1.0-cpu .
# TORCH_VARIANT picks the torch wheel: a CUDA build (cu126, cu128, ...) for GPU nodes or `cpu`, which
# is a few hundred MB instead of several GB. Multi-stage: everything is installed into a venv in the
# build stage; the final image is the slim base plus that venv, without pip, running as a non-root user.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cu128
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/thermograd
# torch first, from the index of the chosen variant, so the project install below does not pull the
# default (CUDA) wheel from PyPI.
RUN /opt/thermograd/bin/pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
      "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
# The wheel is the whole `thermograd` package (its subpackages are these folders); only the trainer extra's
# dependencies are installed. thermograd.trainer.metrics serves /metrics with the exporter's HTTP server.
COPY thermograd ./thermograd
COPY exporter ./exporter
COPY trainer ./trainer
COPY analysis ./analysis
RUN /opt/thermograd/bin/pip install ".[trainer]" \
 && /opt/thermograd/bin/pip uninstall -y pip

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 thermograd \
 && useradd --system --uid 10001 --gid thermograd --home-dir /home/thermograd --create-home \
      --shell /usr/sbin/nologin thermograd \
 && mkdir -p /data/logs && chown thermograd:thermograd /data/logs
COPY --from=build /opt/thermograd /opt/thermograd
# Offline by design: the tiny model is built from a config, the corpus is the stdlib's own source.
ENV PATH=/opt/thermograd/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/home/thermograd/.cache/huggingface
USER 10001:10001
WORKDIR /home/thermograd
EXPOSE 9843
ENTRYPOINT ["python", "-m", "thermograd.trainer"]
CMD ["--model", "tiny", "--bind", "0.0.0.0", "--port", "9843", "--log-dir", "/data/logs/{run_id}"]
