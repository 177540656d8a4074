"""The HTTP endpoint both /metrics servers share (the exporter's and the instrumentation's): a bounded server,
one render per sample, and the exporter-toolkit's web configuration (TLS, client certificates, basic auth)."""
