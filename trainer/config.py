"""The reference job's settings (what `thermograd-trainer` parses into)."""

from __future__ import annotations

from dataclasses import dataclass

from thermograd.trainer.perturb import PerturbSpec


@dataclass
class JobConfig:
    model: str = "tiny"
    data: list[str] | None = None
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 1e-3
    warmup_steps: int | None = None  # None: 10 % of the run
    schedule: str = "cosine"
    seed: int = 0
    device: str = "auto"
    max_grad_norm: float = 1.0  # 0 = no clipping (the pre-clip norm is still measured)
    perturb: PerturbSpec | None = None  # learning-rate bursts (kind=lr)
    pause: PerturbSpec | None = None  # pause bursts (kind=pause): the loop idles, no step is taken
    port: int | None = None  # None: THERMOGRAD_PORT, else 9843
    bind: str = "127.0.0.1"
    web_config: object = None  # a loaded thermograd.endpoint.webconfig.WebConfig (--web.config.file): TLS / basic auth
    log_dir: str | None = None  # '{run_id}' is replaced; None: THERMOGRAD_RUN_DIR, else out/trainer/{run_id}
    linger_s: float = 2.0
    run_id: str | None = None
    gpu_uuid: str | None = None
    max_nonfinite: int = 10
    # Hidden knobs for tests and the benchmark.
    inject_nan_steps: tuple[tuple[int, int], ...] = ()
    instrument: bool = True
    quiet: bool = False
