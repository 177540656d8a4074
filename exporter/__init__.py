"""thermograd exporter."""
