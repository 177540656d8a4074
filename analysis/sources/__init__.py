"""Where a run's series come from: the Prometheus HTTP API client, the queries of one run, run
discovery and windows, collection intervals, foreign exporters and GPU matching."""
