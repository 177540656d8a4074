# syntax=docker/dockerfile:1
# thermograd exporter. Build from the repository root:
#   docker build -f docker/exporter.Dockerfile -t thermograd/exporter:0.1.0 .
# Multi-stage: the wheel is built and installed into a venv in the first stage; the final image holds
# only the base Python and that venv (no compiler, no build cache, no pip), and runs as a non-root user.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/thermograd
WORKDIR /src
COPY pyproject.toml README.md ./
# The wheel is the whole `thermograd` package (its subpackages are these folders, a few hundred kB of
# Python); only the exporter's own dependencies are installed: no torch, no numpy.
COPY thermograd ./thermograd
COPY exporter ./exporter
COPY trainer ./trainer
COPY analysis ./analysis
RUN /opt/thermograd/bin/pip install . \
 && /opt/thermograd/bin/pip uninstall -y pip

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 thermograd \
 && useradd --system --uid 10001 --gid thermograd --home-dir /home/thermograd --create-home \
      --shell /usr/sbin/nologin thermograd
COPY --from=build /opt/thermograd /opt/thermograd
ENV PATH=/opt/thermograd/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9842
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9842/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "thermograd.exporter"]
# Inside a container the exporter must listen beyond loopback; publish or network it deliberately.
CMD ["--backend", "auto", "--bind", "0.0.0.0", "--port", "9842"]
