"""thermograd exporter: GPU/CPU hardware and the RLE efficiency index on a Prometheus endpoint."""

__version__ = "0.1.0"
