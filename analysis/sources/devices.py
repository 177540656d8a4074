"""Which GPU of which hardware source a run trained on: pure matching over the label sets of each source's
identity series (what an instant query returns), so that the exporters' different UUID spellings and the
pod labels of dcgm-exporter on Kubernetes can be compared in Python rather than in PromQL."""

from __future__ import annotations

from dataclasses import dataclass

from thermograd.analysis.catalog import Source
from thermograd.analysis.errors import InputError

# The trainer's own pod and namespace: the target labels a PodMonitor (or kubernetes_sd relabelling) puts on
# every series of the trainer, train_run_info included.
TRAINER_POD_LABELS = ("pod", "kubernetes_pod_name")
TRAINER_NAMESPACE_LABELS = ("namespace", "kubernetes_namespace")


def normalise_uuid(text: str) -> str:
    """One spelling for every exporter: NVML (and dcgm-exporter) write `GPU-8f2c…`, nvidia_gpu_exporter writes
    `8f2c…` in lower case, and a user may type either in any case."""
    bare = text.strip().lower()
    return bare[4:] if bare.startswith("gpu-") else bare


def first_label(labels: dict[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """(name, value) of the first of `names` the label set carries with a non-empty value."""
    return next(((n, labels[n]) for n in names if labels.get(n)), None)


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    rank: str
    gpu_uuid: str   # train_run_info's, "" when the trainer knows none (CPU, or a GPU it did not look up)
    pod: str        # the trainer's pod and namespace target labels, "" outside Kubernetes
    namespace: str
    emulation: str = ""  # train_run_info's emulation label: "clock" when the steps emulate a simulated GPU's clock


@dataclass(frozen=True)
class Device:
    source: str
    uuid_label: str           # the label holding the UUID in this source's series (UUID or uuid)
    uuid: str                 # exactly as the source writes it: the selector's value
    names: tuple[str, ...]    # its device-label values (index, device name), what --device may give
    kind: str                 # gpu | cpu (thermograd's rle_device_info; the foreign exporters list GPUs only)
    backend: str = ""         # thermograd's rle_device_info backend (nvml, cpu, sim, replay); else the source
    heat_source: str = ""     # what drives a simulated or replayed device (rle_device_info's heat_source)

    @property
    def device(self) -> str:
        return self.names[0] if self.names else ""


@dataclass(frozen=True)
class Choice:
    source: Source
    device: Device
    joined_by: str  # "--device", "gpu_uuid", "pod" or "only GPU"
    notes: tuple[str, ...]


def _device(source: Source, labels: dict[str, str]) -> Device | None:
    found = first_label(labels, source.uuid_labels)
    if found is None:
        return None
    names = tuple(labels[n] for n in source.device_labels if labels.get(n))
    return Device(source.name, found[0], found[1], names, labels.get("kind", "gpu"),
                  labels.get("backend") or source.name, labels.get("heat_source", ""))


def _pod_matches(source: Source, labels: dict[str, str], run: RunIdentity) -> bool:
    pod = first_label(labels, source.pod_labels)
    if not (run.pod and pod and pod[1] == run.pod):
        return False
    namespace = first_label(labels, source.namespace_labels)
    return not (run.namespace and namespace) or namespace[1] == run.namespace


def matches(source: Source, label_sets: list[dict[str, str]], run: RunIdentity,
            wanted: str | None) -> tuple[list[Device], str]:
    """The source's devices that are the run's (one per GPU: a GPU whose pod labels changed, or that a relabelling
    gave both UUID and uuid, has several series; the first is kept), and by what: --device (a UUID in any
    spelling or a device label), the run's gpu_uuid, or with an
    empty gpu_uuid the trainer's pod/namespace against the pod labels the source gives each GPU."""
    how = "--device" if wanted else "gpu_uuid" if run.gpu_uuid else "pod"
    found: dict[str, Device] = {}
    for labels in label_sets:
        dev = _device(source, labels)
        if dev is None:
            continue
        if how == "--device":
            hit = normalise_uuid(dev.uuid) == normalise_uuid(wanted or "") or wanted in dev.names
        elif how == "gpu_uuid":
            hit = normalise_uuid(dev.uuid) == normalise_uuid(run.gpu_uuid)
        else:
            hit = _pod_matches(source, labels, run)
        if hit:
            found.setdefault(normalise_uuid(dev.uuid), dev)
    return list(found.values()), how


def gpus(source: Source, label_sets: list[dict[str, str]]) -> list[Device]:
    """Every GPU of the source (thermograd's CPU devices left out), one per UUID."""
    found: dict[str, Device] = {}
    for dev in (_device(source, labels) for labels in label_sets):
        if dev is not None and dev.kind == "gpu":
            found.setdefault(normalise_uuid(dev.uuid), dev)
    return list(found.values())


def choose(candidates: list[tuple[Source, list[dict[str, str]]]], run: RunIdentity, wanted: str | None) -> Choice:
    """The first source (in `candidates`' order: thermograd, dcgm, nvidia-smi) that holds the run's GPU;
    without a join, the only GPU of the first source that has exactly one. One-line errors otherwise."""
    for source, label_sets in candidates:
        devices, how = matches(source, label_sets, run, wanted)
        if len(devices) > 1:
            raise InputError(f"device selection is ambiguous: {source.name} has {len(devices)} GPUs matching by "
                             f"{how} ({', '.join(d.uuid for d in devices)}); pass --device UUID")
        if devices:
            note = {"--device": f"device chosen with --device {wanted}",
                    "pod": f"the run reports no gpu_uuid: joined to the GPU {source.name} labels with the trainer's "
                           f"pod {run.namespace + '/' if run.namespace else ''}{run.pod}",
                    "gpu_uuid": ""}[how]
            return Choice(source, devices[0], how, (note,) if note else ())
    names = "/".join(s.identity for s, _ in candidates)
    if wanted:
        raise InputError(f"device {wanted!r} not found as a uuid or device label of {names}")
    counts = ", ".join(f"{s.name}: {len(gpus(s, sets))}" for s, sets in candidates)
    if run.gpu_uuid:
        # The run names its GPU and no source holds it (its node not scraped, another cluster): another GPU
        # would be analysed as if it were the run's. Never a guess.
        found = ", ".join(d.uuid for s, sets in candidates for d in gpus(s, sets)[:10])
        raise InputError(f"run {run.run_id!r} trained on GPU {run.gpu_uuid!r}, which no {names} series reports "
                         f"(GPUs by source: {counts}{'; ' + found if found else ''}): is its node scraped? "
                         "pass --device UUID to choose another")
    for source, label_sets in candidates:
        only = gpus(source, label_sets)
        if len(only) == 1:
            return Choice(source, only[0], "only GPU", (
                f"the run reports no gpu_uuid; using the only GPU device of {source.name} ({only[0].uuid})",))
    raise InputError(f"cannot tell which device run {run.run_id!r} used: its gpu_uuid {run.gpu_uuid!r} matches no "
                     f"{names} series and no source has exactly one GPU (GPUs by source: {counts}); "
                     "pass --device UUID")
