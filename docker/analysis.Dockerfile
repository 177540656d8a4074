# syntax=docker/dockerfile:1
# thermograd analysis (thermograd-analysis), the image of deploy/kubernetes/examples/analysis-*.yaml. Build from
# the repository root:
#   docker build -f docker/analysis.Dockerfile -t thermograd/analysis:0.1.0 .
# Multi-stage: the wheel and the analysis extra (numpy, scipy, statsmodels, matplotlib, requests: no torch) are
# installed into a venv in the first stage; the final image holds only the base Python and that venv, runs as a
# non-root user and writes where it is told (--out): a mounted volume, with a read-only root filesystem.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/thermograd
WORKDIR /src
COPY pyproject.toml README.md ./
COPY thermograd ./thermograd
COPY exporter ./exporter
COPY trainer ./trainer
COPY analysis ./analysis
RUN /opt/thermograd/bin/pip install ".[analysis]" \
 && /opt/thermograd/bin/pip uninstall -y pip

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 thermograd \
 && useradd --system --uid 10001 --gid thermograd --home-dir /home/thermograd --create-home \
      --shell /usr/sbin/nologin thermograd
COPY --from=build /opt/thermograd /opt/thermograd
# matplotlib's cache on /tmp: with a read-only root filesystem, mount an emptyDir there (the examples do)
ENV PATH=/opt/thermograd/bin:$PATH PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib MPLBACKEND=Agg
USER 10001:10001
WORKDIR /home/thermograd
ENTRYPOINT ["thermograd-analysis"]
CMD ["--help"]
