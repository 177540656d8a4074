"""What the coupling tests and their verdicts are run with: one object, the command line's flags turned into it
(arguments.settings_from_args), its values written to report.json."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Settings:
    max_lag_s: float = 30.0
    # A run's start-up is one regime change, not coupling: in the same second or two the gradient norm
    # plunges and the device leaves idle. On differences that is one extreme pair, and on a 2-minute demo run
    # it alone made Pearson read r = -0.77 between series that were uncorrelated for the other 100 s. A
    # resume after a long gap in the training series (a restart, a checkpoint, an evaluation) is one too.
    warmup_s: float = 30.0
    n_surrogates: int = 1000
    spike_z: float = 3.0
    event_window_s: float = 5.0
    perturbation_window_s: float | None = None  # None: twice the median burst length
    granger_max_order: int = 10
    alpha: float = 0.05
    # The smallest |r| worth calling coupling: a week of 1 s data makes r = 0.01 significant.
    min_effect: float = 0.1
    # The seed's "independent systems" band: |r| < 0.3. Claimed only when an equivalence test shows it.
    equivalence_bound: float = 0.3
    # The seed's bands for a coupling, applied to the CI's bound nearest zero: above strong_r strong, above
    # moderate_r moderate, else weak; a spike-triggered response's in standard deviations of its metric.
    strong_r: float = 0.7
    moderate_r: float = 0.3
    response_strong_sd: float = 2.0
    response_moderate_sd: float = 1.0
    # The spike-triggered responses' smallest effect of interest, in standard deviations of the high-passed
    # metric: "independent" needs each response shown inside +/- this (the metric moving after spikes by less
    # than its own spread); a significant response smaller than response_min_sd is negligible.
    response_bound_sd: float = 1.0
    response_min_sd: float = 0.25
    # A spike for the spike-triggered responses: a change beyond this robust z (a Gaussian series makes one
    # in ~16,000 rows; at --spike-z 3, one in 370, and those noise excursions are no spikes: they dilute the
    # real ones and leave the responses' equivalence unsettled in runs without any).
    response_spike_z: float = 4.0
    seed: int = 0
