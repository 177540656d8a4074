"""Dashboards as code: generates grafana/dashboards/*.json (committed; Grafana provisions them).

    python -m scripts.build_dashboards           # rewrite the JSON files (from the repository root)
    python -m scripts.build_dashboards --check   # exit 1 when the committed JSON is out of date

Built with Grafana's own typed builders, grafana-foundation-sdk (`builders.dashboard`, `timeseries`,
`statetimeline`, `table`, `prometheus`), which emit schema-conformant dashboard JSON. Edit this file, not
the JSON. Every panel queries the provisioned datasource by its fixed uid, and every metric name must be
in docs/metrics.md (tests/test_metric_names.py checks it).

One thing the SDK cannot express: a Prometheus annotation's own options (`step`, `titleFormat`,
`textFormat`, `useValueForTime`; its AnnotationQuery model knows only `expr`). `PrometheusAnnotation`
below adds them to the SDK's model when it is serialised; nothing else is post-processed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, prometheus, statetimeline, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models import prometheus as prom_models

from scripts.generated import write_or_check

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = REPO_ROOT / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "thermograd-prometheus"}
GRID_WIDTH = 24

# Hardware panels read the normalised series of prometheus/rules/sources.yml: one set of names in base units
# for thermograd's exporter, dcgm-exporter and nvidia_gpu_exporter, told apart by `source`, with NVML's uuid.
SOURCES = ("thermograd", "dcgm", "nvidia-smi")
# What makes a GPU known to a source: every exporter reports its temperature.
GPU_SERIES = "device:gpu_temperature_celsius:max"
# The RLE engine runs in thermograd's exporter only; for the other exporters the analysis computes it offline.
THERMOGRAD_ONLY = ("thermograd's exporter only: RLE, collapse and T_sustain are computed by its engine at every "
                   "sample. For dcgm-exporter or nvidia_gpu_exporter, thermograd-analysis --hardware-source "
                   "dcgm|nvidia-smi computes them offline from temperature, power and utilisation.")


def gpus_reported(matchers: str = "") -> str:
    """Every GPU (uuid, source) the sources matching `matchers` reported in the dashboard's time range."""
    selector = f"{GPU_SERIES}{{{matchers}}}" if matchers else GPU_SERIES
    return f"group by (uuid, source) (present_over_time({selector}[$__range]))"


# The selected run's GPU(s), by train_run_info's gpu_uuid (renamed uuid), over the whole time range
# ($__range), so a finished run and its GPU stay selectable.
RUN_GPU = ('group by (uuid) (label_replace(max_over_time(train_run_info{run_id="$run"}[$__range]),'
           ' "uuid", "$1", "gpu_uuid", "(.+)"))')
# Sources that report the run's GPU first (thermograd's exporter first among them: its series are the
# ones the RLE panels share), then every other source: sort_desc keeps that order, so the variable
# defaults to a source that has the run's GPU.
_THERMOGRAD_GPUS, _ALL_GPUS, _SOURCE_GPUS = (gpus_reported('source="thermograd"'), gpus_reported(),
                                             gpus_reported('source="$source"'))
SOURCES_RUN_GPU_FIRST = (
    f"sort_desc(2 * max by (source) ({_THERMOGRAD_GPUS} and on (uuid) {RUN_GPU})"
    f" or max by (source) ({_ALL_GPUS} and on (uuid) {RUN_GPU})"
    f" or 0 * max by (source) ({_ALL_GPUS}))"
)
# The run's GPU first (value 1) when the selected source reports it, then that source's other GPUs
# (value 0): the device defaults to the GPU the selected run trains on.
RUN_GPU_FIRST = f"sort_desc(({RUN_GPU} and on (uuid) {_SOURCE_GPUS}) or on (uuid) 0 * max by (uuid) ({_SOURCE_GPUS}))"
# Most recent run first, so the dashboard opens on the run in progress (or the last one).
RUNS_NEWEST_FIRST = "sort_desc(max by (run_id) (max_over_time(train_run_start_time_seconds[$__range])))"
# Ranks of a job (they share its run_id), the slowest first: its highest compute-time ratio to the job's
# median rank in the time range. The straggler panels default to it.
RANKS_SLOWEST_FIRST = ('sort_desc(max by (rank) (max_over_time('
                       'rank:train_step_compute_seconds:ratio_to_median1m{run_id="$run"}[$__range])))')
# Each rank of the run with its GPU's uuid (train_run_info's gpu_uuid): joins a device series to ranks.
RANK_GPUS = ('group by (run_id, rank, uuid) '
             '(label_replace(train_run_info{run_id="$run"}, "uuid", "$1", "gpu_uuid", "(.+)"))')


def on_rank_gpus(device_series: str, ranks: str = "", per_uuid: str = "one") -> str:
    """`device_series` for each rank of the run, labelled with the rank. `per_uuid="one"`: one series per uuid
    (e.g. of one source), so several ranks may share a GPU; `"many"`: several per uuid (e.g. one per throttle
    reason), so `ranks` must select ranks of distinct GPUs (one rank) and the rank's label is copied across."""
    rank_gpus = RANK_GPUS.replace('run_id="$run"', f'run_id="$run",{ranks}') if ranks else RANK_GPUS
    if per_uuid == "many":
        return f"{device_series} * on (uuid) group_left (run_id, rank) {rank_gpus}"
    return f"{rank_gpus} * on (uuid) group_left () {device_series}"


# The thermal and power reasons (GPUThrottlingActive's and power capping), by whichever exporter.
THROTTLE_REASONS = "sw_power_cap|hw_slowdown|sw_thermal|hw_thermal|hw_power_brake|thermal_violation|power_violation"


def datasource() -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val=DATASOURCE["type"], uid=DATASOURCE["uid"])


# ------------------------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False  # an instant query (tables): the latest value of each series
    table: bool = False

    def builder(self, ref: str) -> prometheus.Dataquery:
        query = (prometheus.Dataquery().expr(self.expr).legend_format(self.legend).ref_id(ref)
                 .datasource(datasource()))
        query = query.instant() if self.instant else query.range()
        return query.format(prom_models.PromQueryFormat.TABLE) if self.table else query


def queries(*pairs: tuple[str, str]) -> list[Query]:
    return [Query(expr, legend) for expr, legend in pairs]


# -------------------------------------------------------------------------------------------- panels
@dataclass(frozen=True)
class RightAxis:
    """Field override: the series matching `series_regex` on a right-hand axis (optionally as red bars)."""
    series_regex: str
    unit: str
    bars: bool = False

    def properties(self) -> list[dm.DynamicConfigValue]:
        props = [dm.DynamicConfigValue("custom.axisPlacement", "right"), dm.DynamicConfigValue("unit", self.unit)]
        if self.bars:
            props += [dm.DynamicConfigValue("custom.drawStyle", "bars"),
                      dm.DynamicConfigValue("custom.fillOpacity", 40),
                      dm.DynamicConfigValue("color", {"mode": "fixed", "fixedColor": "red"})]
        return props


@dataclass(frozen=True)
class Panel:
    """What differs between panels; `builder` turns it into the SDK's panel builder of its kind."""
    title: str
    targets: list[Query]
    width: int = 12
    height: int = 8
    kind: str = "timeseries"  # or "state-timeline", "table", "heatmap"
    unit: str = "short"
    description: str = ""
    right_axes: Sequence[RightAxis] = field(default_factory=tuple)

    def builder(self, panel_id: int, grid: dm.GridPos) -> cogbuilder.Builder[dm.Panel]:
        panel = {"timeseries": _timeseries, "state-timeline": _state_timeline, "table": _table,
                 "heatmap": _ratio_heatmap}[self.kind]()
        for i, query in enumerate(self.targets):
            panel.with_target(query.builder(chr(ord("A") + i)))
        for axis in self.right_axes:
            panel.override_by_regexp(axis.series_regex, axis.properties())
        return (panel.id(panel_id).title(self.title).description(self.description).datasource(datasource())
                .unit(self.unit).grid_pos(grid))


def _legend() -> common_builders.VizLegendOptions:
    return (common_builders.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM))


def _timeseries() -> timeseries.Panel:
    # Points never drawn and gaps never bridged: a scrape that is missing shows as a gap.
    return (timeseries.Panel().line_width(1).fill_opacity(0).span_nulls(False)
            .show_points(cm.VisibilityMode.NEVER).legend(_legend())
            .tooltip(common_builders.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.NONE)))


def _state_timeline() -> statetimeline.Panel:
    return (statetimeline.Panel().show_value(cm.VisibilityMode.NEVER).merge_values(True).row_height(0.8)
            .legend(_legend()))


def _ratio_heatmap() -> heatmap.Panel:
    """Rows = series as the query returns them (one per rank), colour = the value: 1 (the job's median rank)
    pale, 1.5 and more dark red. Not calculated into buckets: each cell is the series' own value."""
    colors = (heatmap.HeatmapColorOptions().mode(heatmap_models.HeatmapColorMode.SCHEME).scheme("Oranges")
              .scale(heatmap_models.HeatmapColorScale.LINEAR).steps(64).min(1.0).max(1.5).fill("dark-orange"))
    return (heatmap.Panel().calculate(False).color(colors).cell_gap(1)
            .cell_values(heatmap.CellValues().unit("x").decimals(2)).show_legend())


def _table() -> table.Panel:
    return table.Panel().show_header(True).footer(common_builders.TableFooterOptions().show(False))


def layout(panels: list[Panel]) -> list[cogbuilder.Builder[dm.Panel]]:
    """Flow layout: left to right, wrapping before a panel that would overflow the grid; each row as tall
    as its tallest panel. (The SDK's own auto-layout wraps only after a row has overflowed.)"""
    built, x, y, row_height = [], 0, 0, 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        built.append(panel.builder(panel_id, dm.GridPos(h=panel.height, w=panel.width, x=x, y=y)))
        x += panel.width
        row_height = max(row_height, panel.height)
    return built


# ------------------------------------------------------------------------------ variables, annotations
def query_variable(name: str, label: str, query: str, regex: str = "", *, multi: bool = False) -> dash.QueryVariable:
    # The classic string form: Grafana runs label_values()/query_result() exactly as written.
    variable = (dash.QueryVariable(name).label(label).datasource(datasource()).query(query).regex(regex)
                .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.DISABLED)
                .hide(dm.VariableHide.DONT_HIDE).multi(multi).include_all(multi))
    return variable.all_value(".+") if multi else variable


class _PrometheusAnnotationQuery(dm.AnnotationQuery):
    """The SDK's AnnotationQuery plus the Prometheus annotation options it has no field for."""

    def __init__(self, base: dm.AnnotationQuery, options: dict[str, Any]):
        super().__init__(**{k: getattr(base, k) for k in ("name", "datasource", "enable", "hide", "icon_color",
                                                          "filter_val", "target", "type_val", "built_in", "expr")})
        self.options = options

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), **self.options}


class PrometheusAnnotation(cogbuilder.Builder[dm.AnnotationQuery]):
    """A Prometheus annotation: every sample of `expr` is an event; the SDK builds the query, this adds
    step 1 s (Grafana's default 60 s step would miss a collapse shorter than a minute) and the title."""

    def __init__(self, name: str, expr: str, color: str, title: str):
        self._base = (dash.AnnotationQuery().name(name).datasource(datasource()).enable(True).hide(False)
                      .icon_color(color).expr(expr))
        self._options = {"step": "1s", "titleFormat": title, "textFormat": "", "useValueForTime": False}

    def build(self) -> dm.AnnotationQuery:
        return _PrometheusAnnotationQuery(self._base.build(), self._options)


def builtin_annotation() -> dash.AnnotationQuery:
    """Grafana's own "Annotations & Alerts" (what a dashboard made in the UI has), hidden."""
    return (dash.AnnotationQuery().name("Annotations & Alerts").built_in(1).type("dashboard")
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --")).enable(True).hide(True)
            .icon_color("rgba(0, 211, 255, 1)"))


# ---------------------------------------------------------------------------------------- dashboards
def dashboard(uid: str, title: str, description: str, panels: list[Panel], variables: list[dash.QueryVariable],
              annotations: list[PrometheusAnnotation], tags: list[str]) -> dict:
    builder = (dash.Dashboard(title).uid(uid).description(description).tags(tags).readonly()
               .tooltip(dm.DashboardCursorSync.CROSSHAIR).timezone("browser").refresh("5s").time("now-15m", "now")
               .version(1).annotations([builtin_annotation(), *annotations]).variables(variables))
    for panel in layout(panels):
        builder.with_panel(panel)
    return json.loads(JSONEncoder().encode(builder.build()))


def coupling_dashboard() -> dict:
    run, dev, hw = 'run_id="$run"', 'uuid="$uuid"', 'source="$source",uuid="$uuid"'
    source, rank = 'source="$source"', 'rank="$rank"'
    panels = [
        Panel("Training loss", queries((f"train_loss{{{run}}}", "loss, rank {{rank}}")),
              description="Loss of the last optimizer step, per rank."),
        Panel("Gradient norm (pre-clip)", queries(
            (f"train_grad_norm{{{run}}}", "last step, rank {{rank}}"),
            (f"rank:train_step_grad_norm:mean_interval{{{run}}}",
             "mean of the steps in each scrape interval, rank {{rank}}"),
            (f"rank:train_grad_norm:median10m{{{run}}}", "10-min median, rank {{rank}}")),
            description="Shaded regions: collapse of the selected device; perturbation bursts are annotated too."),
        Panel("RLE with collapse markers", queries(
            (f"rle_efficiency_smoothed{{{dev}}}", "RLE (5 s mean)"),
            (f"rle_efficiency{{{dev}}}", "RLE raw"),
            (f"rle_rolling_peak{{{dev}}}", "rolling peak"),
            (f"rle_collapsed{{{dev}}}", "collapsed")),
            right_axes=[RightAxis("collapsed", "bool_yes_no", bars=True)],
            description="RLE = util x stability / (A_load x (1 + 1/T_sustain)); red bars mark collapse. "
                        + THERMOGRAD_ONLY),
        Panel("Temperature", queries((f"device:gpu_temperature_celsius:max{{{hw}}}", "temperature ({{source}})")),
              unit="celsius"),
        Panel("Power and A_load", queries(
            (f"device:gpu_power_watts:max{{{hw}}}", "power"),
            (f"device:gpu_power_limit_watts:max{{{hw}}}", "rated power (power limit)"),
            (f"device:gpu_power_watts:max{{{hw}}} / device:gpu_power_limit_watts:max{{{hw}}}", "A_load")),
            unit="watt", right_axes=[RightAxis("A_load", "percentunit")],
            description="A_load = power / rated power. thermograd's rated power is its --rated-power or NVML's "
                        "limit; dcgm-exporter reports a limit only with DCGM_FI_DEV_POWER_MGMT_LIMIT in its CSV."),
        Panel("T_sustain (s to the temperature limit)", queries((f"rle_sustain_seconds{{{dev}}}", "T_sustain")),
              unit="s", width=6, description=THERMOGRAD_ONLY),
        Panel("Throttle reasons", queries((f"device:gpu_throttle_active:max{{{hw}}}", "{{reason}}")),
              kind="state-timeline", unit="bool_on_off", width=6,
              description="Clock-event reasons in NVML's names; dcgm-exporter's violation counters show as "
                          "thermal_violation / power_violation. dcgm-exporter's default counters have none."),
        Panel("GPU utilisation", queries((f"device:gpu_utilization_ratio:max{{{hw}}}", "utilisation ({{source}})")),
              unit="percentunit", width=8),
        Panel("Steps per second", queries((f"rank:train_steps:rate1m{{{run}}}", "rank {{rank}}")),
              unit="short", width=8),
        Panel("Training energy efficiency (tokens per joule)", queries(
            (f'rank:train_tokens_per_joule:ratio_rate1m{{{run},source="$source"}}', "rank {{rank}} on {{uuid}}")),
            unit="short", width=8,
            description="Tokens processed per joule the run's GPU drew, as the selected source measures it (1-min "
                        "rates of its energy counter, so nothing between samples is missed; nvidia_gpu_exporter "
                        "without its NVML backend: its sampled power). Empty for a CPU run: no GPU energy."),
        Panel("Throttle cost (tokens/s lost to throttling)", queries(
            (f"rank:train_tokens_lost_to_throttling:rate10s{{{run}}}", "lost, rank {{rank}} on {{uuid}}"),
            (f"rank:train_tokens:rate10s{{{run}}}", "tokens/s now, rank {{rank}}"),
            (f"last_over_time(rank:train_tokens:rate10s_unthrottled_avg10m{{{run}}}[6h])",
             "unthrottled tokens/s, rank {{rank}}")),
            unit="short", width=12,
            description="The run's own unthrottled speed (10-s windows of the last 10 min with the GPU not throttled "
                        "by a thermal or power reason and no pause burst; through a longer hot spell, the last such "
                        "speed) minus its speed now, while its GPU is throttled; 0 while it is not. Negative: not "
                        "slower while throttled. Throttling as any hardware source reports it (thermograd's, "
                        "dcgm-exporter's or nvidia_gpu_exporter's clock-event reasons)."),
        Panel("SM clock", queries((f"device:gpu_sm_clock_hertz:max{{{hw}}}", "SM clock ({{source}})")),
              unit="hertz", width=12,
              description="Thermal and power throttling show as clock drops (see Throttle reasons)."),
        Panel("Firing alerts", [Query('ALERTS{alertstate="firing"}', instant=True, table=True)],
              kind="table", width=8),
        # The job's row: ranks in lockstep (DDP, FSDP2) wait for the slowest; which rank is it, and is it its GPU?
        Panel("Job: compute time per step ÷ the job's median rank (ranks × time)", queries(
            (f"rank:train_step_compute_seconds:ratio_to_median1m{{{run}}}", "rank {{rank}}")),
            kind="heatmap", width=24, height=10,
            description="One row per rank of the run, coloured by its compute time per step (its step less its "
                        "waits on collectives, 1-min mean) over the median rank's: 1 is the job's pace, 1.25 a rank "
                        "25 % slower. Wall step times cannot show this: the ranks wait for each other. "
                        "thermograd-analysis --job names the stragglers with a test and tells a thermal or power "
                        "straggler from another cause."),
        Panel("Job: the selected rank's GPU temperature", queries(
            (on_rank_gpus(f"device:gpu_temperature_celsius:max{{{source}}}", rank), "rank {{rank}} ({{uuid}})"),
            (f"quantile(0.5, {on_rank_gpus(f'device:gpu_temperature_celsius:max{{{source}}}')})",
             "median of the job's GPUs")),
            unit="celsius", width=6,
            description="The rank of the Rank variable (default: the slowest) against the median of the job's GPUs, "
                        "as the selected hardware source reports them."),
        Panel("Job: the selected rank's GPU SM clock", queries(
            (on_rank_gpus(f"device:gpu_sm_clock_hertz:max{{{source}}}", rank), "rank {{rank}} ({{uuid}})"),
            (f"quantile(0.5, {on_rank_gpus(f'device:gpu_sm_clock_hertz:max{{{source}}}')})",
             "median of the job's GPUs")),
            unit="hertz", width=6, description="A clock below its peers' is the physical path of a thermal straggler."),
        Panel("Job: the selected rank's GPU throttle reasons", queries(
            (f'max by (rank, reason) ({on_rank_gpus(f"device:gpu_throttle_active:max{{{source}}}", rank, "many")})',
             "rank {{rank}}: {{reason}}")),
            kind="state-timeline", unit="bool_on_off", width=6,
            description="Clock-event reasons of the selected rank's GPU; ThermalStraggler fires when a rank computes "
                        ">= 1.1x the median for 5 min while a thermal or power reason is active."),
        Panel("Job: tokens/s lost to the slowest rank", queries(
            (f"run:train_tokens_lost_to_slowest_rank:rate1m{{{run}}}", "lost to the slowest rank"),
            (f"sum by (run_id) (rank:train_tokens:rate1m{{{run}}})", "the job's tokens/s")),
            width=6,
            description="The job's tokens/s times (slowest rank's ratio - 1): what it would gain at its median "
                        "rank's pace. thermograd-analysis --job attributes it to each GPU's throttling, "
                        "with a 95 % CI."),
    ]
    variables = [
        query_variable("run", "Run", f"query_result({RUNS_NEWEST_FIRST})", '/run_id="([^"]+)"/'),
        query_variable("source", "Hardware source (default: one that reports the run's GPU)",
                       f"query_result({SOURCES_RUN_GPU_FIRST})", '/source="([^"]+)"/'),
        query_variable("uuid", "Device (default: the run's GPU)", f"query_result({RUN_GPU_FIRST})",
                       '/uuid="([^"]+)"/'),
        query_variable("rank", "Rank (default: the job's slowest)", f"query_result({RANKS_SLOWEST_FIRST})",
                       '/rank="([^"]+)"/'),
    ]
    annotations = [
        PrometheusAnnotation("Collapse", f"rle_collapsed{{{dev}}} == 1", "red", "collapse on {{device}}"),
        PrometheusAnnotation("Perturbation burst", f"train_perturbation_active{{{run}}} == 1", "orange",
                             "{{kind}} perturbation, rank {{rank}}"),
    ]
    return dashboard("thermograd-coupling", "Training ↔ thermal coupling",
                     "The seed's four panels on Prometheus's one clock, plus what explains them: power, A_load, "
                     "T_sustain, throttling, utilisation, throughput, energy efficiency and alerts. Hardware panels "
                     "follow the source variable (thermograd's exporter, dcgm-exporter or nvidia_gpu_exporter).",
                     panels, variables, annotations, ["thermograd", "training"])


def fleet_dashboard() -> dict:
    node, hw = 'instance=~"$instance"', 'source=~"$source",instance=~"$instance"'
    per_device, per_gpu = "{{instance}} {{device}}", "{{source}} {{instance}} {{device}}"
    panels = [
        Panel("RLE per device (5 s mean)", queries((f"rle_efficiency_smoothed{{{node}}}", per_device)),
              description=THERMOGRAD_ONLY),
        Panel("Temperature", queries((f"device:gpu_temperature_celsius:max{{{hw}}}", per_gpu)), unit="celsius"),
        Panel("Power", queries((f"device:gpu_power_watts:max{{{hw}}}", per_gpu)), unit="watt"),
        Panel("Utilisation", queries((f"device:gpu_utilization_ratio:max{{{hw}}}", per_gpu)), unit="percentunit"),
        Panel("Collapse onsets in the last 10 min", queries(
            (f"device:rle_collapse_events:increase10m{{{node}}}", per_device)), description=THERMOGRAD_ONLY),
        Panel("Thermal or power throttling", queries(
            (f'max by (source, instance, device) (device:gpu_throttle_active:max{{{hw},reason=~"{THROTTLE_REASONS}"}})',
             per_gpu)),
            kind="state-timeline", unit="bool_on_off",
            description="Any thermal or power clock-event reason active (dcgm-exporter: with a throttle field in "
                        "its counters CSV; its default counters have none)."),
        Panel("GPU exporters up", queries(
            (f'up{{job="exporter",{node}}} or on (job, instance) (up and on (job, instance) group by (job, instance) '
             f'(present_over_time(instance:gpu_exporter:group{{{hw}}}[$__range])))', "{{job}} {{instance}}")),
            kind="state-timeline", unit="bool_yes_no", width=8,
            description="thermograd's exporter (job exporter) and every target that served GPU series of the "
                        "selected sources in the time range."),
        Panel("Exporter sampling rate and errors", queries(
            (f"instance:rle_exporter_samples:rate1m{{{node}}}", "samples/s {{instance}}"),
            (f"sum by (instance) (rate(rle_exporter_errors_total{{{node}}}[5m]))"
             f' or on (instance) 0 * up{{job="exporter",{node}}}', "errors/s {{instance}}")),
            unit="hertz", width=8, description="thermograd's exporter's own health."),
        Panel("Sampling round duration (p99)", queries(
            ("histogram_quantile(0.99, sum by (le, instance) "
             f"(rate(rle_exporter_sample_duration_seconds_bucket{{{node}}}[5m])))", "{{instance}}")),
            unit="s", width=8, description="thermograd's exporter's own health."),
        Panel("Devices", [Query(f"rle_device_info{{{node}}}", instant=True, table=True)],
              kind="table", width=24, height=6, description="thermograd's exporter's devices (model, backend)."),
    ]
    variables = [
        query_variable("source", "Hardware source", f"label_values({GPU_SERIES}, source)", multi=True),
        query_variable("instance", "Node", f'label_values({GPU_SERIES}{{source=~"$source"}}, instance)', multi=True),
    ]
    annotations = [PrometheusAnnotation("Collapse", f"rle_collapsed{{{node}}} == 1", "red",
                                        "collapse on {{instance}} {{device}}")]
    return dashboard("thermograd-fleet", "GPU fleet",
                     "Every GPU of every hardware exporter (thermograd's, dcgm-exporter, nvidia_gpu_exporter): heat, "
                     "power, utilisation, throttling, exporter health; efficiency and collapses from thermograd's.",
                     panels, variables, annotations, ["thermograd", "fleet"])


DASHBOARDS = {"training-thermal-coupling.json": coupling_dashboard, "gpu-fleet.json": fleet_dashboard}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard differs")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR)
    args = parser.parse_args(argv)
    outputs = {args.out / name: render(build) for name, build in DASHBOARDS.items()}
    return write_or_check(outputs, check=args.check, script="scripts.build_dashboards")


if __name__ == "__main__":
    sys.exit(main())
