"""deploy/kubernetes, validated offline: what `kubectl apply -k deploy/kubernetes` would create.

- Every core object (and the examples) against the Kubernetes OpenAPI schemas of a pinned version,
  strictly (an unknown or misspelt field fails), with the kubernetes-validate package.
- The prometheus-operator objects (ServiceMonitor, PodMonitor, PrometheusRule) against a hand-written
  structural check of what their CRDs (monitoring.coreos.com/v1) require and allow, and the
  PrometheusRule's rules with the real promtool.
- The generated files (PrometheusRule from prometheus/rules, dashboard ConfigMaps from
  grafana/dashboards) are what scripts/build_k8s.py makes of the current sources.
- The stack's own rules: one 1 s clock, the job names the rules and the analysis select on, a hardened
  exporter on GPU nodes with a /healthz probe.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from test_stack_config import run_ok, tool

from scripts import build_dashboards, build_k8s

ROOT = Path(__file__).resolve().parents[1]
KDIR = ROOT / "deploy" / "kubernetes"
EXAMPLES = sorted((KDIR / "examples").glob("*.yaml"))
K8S_VERSION = "1.31.0"  # the oldest Kubernetes still supported upstream when this was written
MONITORING = "monitoring.coreos.com/v1"


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kustomization() -> dict:
    return yaml.safe_load((KDIR / "kustomization.yaml").read_text(encoding="utf-8"))


def built() -> list[dict]:
    """kustomize's result for the features kustomization.yaml uses (namespace, labels, resources)."""
    config = kustomization()
    objects = [obj for resource in config["resources"] for obj in load_all(KDIR / resource)]
    labels = {k: v for entry in config.get("labels", []) for k, v in entry["pairs"].items()}
    for obj in objects:
        meta = obj["metadata"]
        meta["labels"] = {**meta.get("labels", {}), **labels}
        if obj["kind"] != "Namespace":
            meta["namespace"] = config["namespace"]
    return objects


OBJECTS = built()
EXAMPLE_OBJECTS = [obj for path in EXAMPLES for obj in load_all(path)]
TRAINER_OBJECTS = load_all(KDIR / "examples" / "trainer-job.yaml")  # the examples hold other Jobs too


def _id(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def one(kind: str, objects: list[dict] = OBJECTS) -> dict:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


# --------------------------------------------------------------------------------- kustomize, sources
def test_generated_files_are_what_build_k8s_makes_of_the_sources():
    for path, text in build_k8s.outputs().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run python -m scripts.build_k8s"


def test_kustomization_applies_every_manifest_and_only_features_understood_here():
    config = kustomization()
    assert set(config) <= {"apiVersion", "kind", "namespace", "labels", "resources"}
    manifests = {str(p.relative_to(KDIR)) for p in KDIR.rglob("*.yaml")
                 if p.name != "kustomization.yaml" and "examples" not in p.parts}
    assert set(config["resources"]) == manifests


def test_kustomize_itself_builds_the_same_objects():
    """Cross-check of the emulation above with the real kustomize (kubectl's), where kubectl exists."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the emulated build is checked by every other test here")
    result = subprocess.run([kubectl, "kustomize", str(KDIR)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    real = {_id(obj): obj for obj in yaml.safe_load_all(result.stdout)}
    assert real == {_id(obj): obj for obj in OBJECTS}


# ------------------------------------------------------------------------------------ core objects
CORE = [obj for obj in OBJECTS + EXAMPLE_OBJECTS if obj["apiVersion"] != MONITORING]


@pytest.mark.parametrize("obj", CORE, ids=_id)
def test_core_object_is_valid_for_the_pinned_kubernetes(obj: dict):
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_core_validation_rejects_a_misspelt_field():
    daemonset = copy.deepcopy(one("DaemonSet"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, K8S_VERSION, strict=True)


def test_exporter_daemonset_runs_hardened_on_gpu_nodes():
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert " ".join(container["args"]).count("--bind 0.0.0.0") == 1
    for probe in ("livenessProbe", "readinessProbe"):  # over TLS, no credentials: /healthz needs none
        healthz = {"path": "/healthz", "port": "metrics", "scheme": "HTTPS"}
        assert container[probe]["httpGet"] == healthz, probe
    assert {"name": "metrics", "containerPort": 9842, "protocol": "TCP"} in container["ports"]
    service = one("Service")
    assert service["spec"]["selector"].items() <= one("DaemonSet")["spec"]["template"]["metadata"]["labels"].items()
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


# ----------------------------------------------------------------- prometheus-operator objects (CRDs)
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
RELABEL_KEYS = {"action", "sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
                   "uppercase", "keepequal", "dropequal"}
ENDPOINT_KEYS = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                 "honorTimestamps", "relabelings", "metricRelabelings", "params", "tlsConfig", "basicAuth"}
# SafeTLSConfig (a ServiceMonitor's TLSConfig adds caFile/certFile/keyFile: files of the Prometheus pod)
TLS_KEYS = {"ca", "cert", "keySecret", "serverName", "insecureSkipVerify", "caFile", "certFile", "keyFile"}
MONITOR_KEYS = {"ServiceMonitor": ("endpoints", {"selector", "namespaceSelector", "endpoints", "jobLabel",
                                                 "targetLabels", "podTargetLabels", "sampleLimit"}),
                "PodMonitor": ("podMetricsEndpoints", {"selector", "namespaceSelector", "podMetricsEndpoints",
                                                       "jobLabel", "podTargetLabels", "sampleLimit"})}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def _string_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _metadata_errors(obj: dict) -> list[str]:
    meta = obj.get("metadata", {})
    errors = [] if obj.get("apiVersion") == MONITORING else [f"apiVersion {obj.get('apiVersion')!r}"]
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", str(meta.get("name", ""))):
        errors.append(f"metadata.name {meta.get('name')!r}")
    if "labels" in meta and not _string_map(meta["labels"]):
        errors.append("metadata.labels must map strings to strings")
    return errors


def _secret_ref_errors(ref: object, where: str) -> list[str]:
    """A SecretKeySelector: {name, key[, optional]}, both strings."""
    ok = isinstance(ref, dict) and set(ref) <= {"name", "key", "optional"} and all(
        isinstance(ref.get(k), str) and ref.get(k) for k in ("name", "key"))
    return [] if ok else [f"{where} must be a secret reference {{name, key}}"]


def _auth_errors(endpoint: dict, where: str) -> list[str]:
    """scheme, tlsConfig (SafeTLSConfig: ca/cert are {secret|configMap: selector}) and basicAuth."""
    errors = []
    if endpoint.get("scheme", "http") not in ("http", "https"):
        errors.append(f"{where}.scheme {endpoint['scheme']!r}")
    tls = endpoint.get("tlsConfig", {})
    errors += [f"{where}.tlsConfig.{key} is not a field" for key in set(tls) - TLS_KEYS]
    for key in ("ca", "cert"):
        if key in tls:
            source = tls[key]
            if not (isinstance(source, dict) and len(source) == 1 and set(source) <= {"secret", "configMap"}):
                errors.append(f"{where}.tlsConfig.{key} must hold one secret or configMap")
            else:
                errors += _secret_ref_errors(next(iter(source.values())), f"{where}.tlsConfig.{key}")
    if "keySecret" in tls:
        errors += _secret_ref_errors(tls["keySecret"], f"{where}.tlsConfig.keySecret")
    auth = endpoint.get("basicAuth")
    if auth is not None:
        if not isinstance(auth, dict) or set(auth) != {"username", "password"}:
            errors.append(f"{where}.basicAuth must hold username and password")
        else:
            errors += [e for key in ("username", "password")
                       for e in _secret_ref_errors(auth[key], f"{where}.basicAuth.{key}")]
    return errors


def monitor_errors(obj: dict) -> list[str]:
    """What the ServiceMonitor/PodMonitor CRD schema requires and allows, for the fields used here."""
    endpoints_key, allowed = MONITOR_KEYS[obj["kind"]]
    errors, spec = _metadata_errors(obj), obj.get("spec", {})
    errors += [f"spec.{key} is not a field" for key in set(spec) - allowed]
    selector = spec.get("selector")
    if not (isinstance(selector, dict) and (_string_map(selector.get("matchLabels", {})) and selector)):
        errors.append("spec.selector (required) must hold matchLabels/matchExpressions")
    endpoints = spec.get(endpoints_key)
    if not (isinstance(endpoints, list) and endpoints):
        errors.append(f"spec.{endpoints_key} must list at least one endpoint")
    for i, endpoint in enumerate(endpoints or []):
        where = f"spec.{endpoints_key}[{i}]"
        errors += [f"{where}.{key} is not a field" for key in set(endpoint) - ENDPOINT_KEYS]
        if not isinstance(endpoint.get("port"), str):
            errors.append(f"{where}.port must be a port name")
        errors += [f"{where}.{key} {endpoint[key]!r} is not a duration" for key in ("interval", "scrapeTimeout")
                   if key in endpoint and not DURATION.fullmatch(str(endpoint[key]))]
        errors += _auth_errors(endpoint, where)
        for kind in ("relabelings", "metricRelabelings"):
            for j, rule in enumerate(endpoint.get(kind, [])):
                errors += [f"{where}.{kind}[{j}].{key} is not a field" for key in set(rule) - RELABEL_KEYS]
                if str(rule.get("action", "replace")).lower() not in RELABEL_ACTIONS:
                    errors.append(f"{where}.{kind}[{j}].action {rule.get('action')!r}")
                if not all(isinstance(label, str) for label in rule.get("sourceLabels", [])):
                    errors.append(f"{where}.{kind}[{j}].sourceLabels must be label names")
    return errors


def rule_errors(obj: dict) -> list[str]:
    """What the PrometheusRule CRD schema requires: named, unique groups; rules with expr and exactly one
    of record/alert; durations; string labels and annotations."""
    errors, groups = _metadata_errors(obj), obj.get("spec", {}).get("groups")
    if not isinstance(groups, list) or not groups:
        return [*errors, "spec.groups must list rule groups"]
    names = [group.get("name") for group in groups]
    if not all(names) or len(set(names)) != len(names):
        errors.append(f"group names must be present and unique: {names}")
    for group in groups:
        if "interval" in group and not DURATION.fullmatch(str(group["interval"])):
            errors.append(f"{group['name']}: interval {group['interval']!r}")
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            errors += [f"{name}: {key} is not a field" for key in set(rule) - RULE_KEYS]
            if "expr" not in rule or ("alert" in rule) == ("record" in rule):
                errors.append(f"{name}: needs expr and exactly one of alert/record")
            if "for" in rule and not DURATION.fullmatch(str(rule["for"])):
                errors.append(f"{name}: for {rule['for']!r}")
            errors += [f"{name}: {key} must map strings to strings" for key in ("labels", "annotations")
                       if key in rule and not _string_map(rule[key])]
    return errors


CRD_OBJECTS = [obj for obj in OBJECTS + EXAMPLE_OBJECTS if obj["apiVersion"] == MONITORING]


@pytest.mark.parametrize("obj", CRD_OBJECTS, ids=_id)
def test_operator_object_has_what_its_crd_requires(obj: dict):
    check = rule_errors if obj["kind"] == "PrometheusRule" else monitor_errors
    assert check(obj) == []


def test_the_structural_check_rejects_broken_objects():
    monitor = copy.deepcopy(one("PodMonitor"))
    del monitor["spec"]["selector"]
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "1 second"
    monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rename"
    assert len(monitor_errors(monitor)) == 3
    monitor = copy.deepcopy(one("ServiceMonitor"))
    endpoint = monitor["spec"]["endpoints"][0]
    endpoint["tlsConfig"]["ca"] = {"secret": {"name": "x"}}  # no key
    endpoint["tlsConfig"]["verify"] = True  # not a field
    endpoint["basicAuth"]["password"] = "plain-text"  # not a secret reference
    assert len(monitor_errors(monitor)) == 3
    rule = copy.deepcopy(one("PrometheusRule"))
    first = rule["spec"]["groups"][0]["rules"][0]
    first["record"] = first["alert"]  # both alert and record
    rule["spec"]["groups"].append({"name": rule["spec"]["groups"][0]["name"], "rules": []})
    assert len(rule_errors(rule)) == 2


def test_prometheusrule_holds_exactly_the_repository_rules_and_promtool_accepts_them(tmp_path: Path):
    spec = one("PrometheusRule")["spec"]
    assert spec["groups"] == build_k8s.rule_groups()
    extracted = tmp_path / "prometheusrule-spec.yml"
    extracted.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    output = run_ok(tool("promtool"), "check", "rules", extracted)
    assert f"SUCCESS: {sum(len(g['rules']) for g in spec['groups'])} rules found" in output


# ------------------------------------------------------------------- scraping: one clock, job names
def test_exporter_and_trainers_are_scraped_on_one_clock_under_the_stack_job_names():
    endpoints = {"exporter": one("ServiceMonitor")["spec"]["endpoints"],
                 "trainer": one("PodMonitor")["spec"]["podMetricsEndpoints"]}
    for job, (endpoint,) in endpoints.items():
        assert endpoint["port"] == "metrics" and endpoint["interval"] == endpoint["scrapeTimeout"] == "1s", job
        assert {"action": "replace", "targetLabel": "job", "replacement": job} in endpoint["relabelings"], job
        assert "rank" not in {r.get("targetLabel") for r in endpoint["relabelings"]}  # never shadow the trainer's
    prometheus_yml = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    intervals = {j["job_name"]: j["scrape_interval"] for j in prometheus_yml["scrape_configs"]}
    assert intervals["exporter"] == intervals["trainer"] == "1s"  # the same clock as compose and the demo


def test_the_trainer_podmonitor_selects_the_example_trainer_pods():
    monitor = one("PodMonitor")["spec"]
    assert monitor["selector"] == {"matchLabels": {"thermograd.io/trainer": "true"}}
    assert monitor["namespaceSelector"] == {"any": True}
    pod = one("Job", TRAINER_OBJECTS)["spec"]["template"]
    assert monitor["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert "metrics" in {port["name"] for port in container["ports"]}
    assert " ".join(container["args"]).count("--bind 0.0.0.0") == 1


# --------------------------------------------------------------------------------- TLS and basic auth
WEB_CONFIG_FLAG = "--web.config.file"


def _projected_files(pod: dict, mount_path: str, container: dict) -> tuple[set[str], set[str]]:
    """(file names, Secret names) of the projected volume mounted at `mount_path`."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == mount_path]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    sources = [source["secret"] for source in volume["projected"]["sources"]]
    return {item["path"] for s in sources for item in s["items"]}, {s["name"] for s in sources}


@pytest.mark.parametrize("kind", ["DaemonSet", "Job"])
def test_the_endpoints_serve_tls_from_a_mounted_secret(kind: str):
    """The web config file the container is given, and the certificate it names (the web config of
    deploy/kubernetes/README.md: tls.crt, tls.key beside it), are projected into one read-only folder that
    the container's group may read."""
    obj = one(kind, OBJECTS + TRAINER_OBJECTS)
    pod = obj["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    config = Path(args[args.index(WEB_CONFIG_FLAG) + 1])
    files, secrets = _projected_files(pod, str(config.parent), container)
    assert files == {config.name, "tls.crt", "tls.key"}
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    readme = (KDIR / "README.md").read_text()
    for secret in secrets:
        assert f"`{secret}`" in readme, f"{secret}: how to create it is not in deploy/kubernetes/README.md"


def test_both_monitors_scrape_over_tls_with_basic_auth_from_secrets():
    readme = (KDIR / "README.md").read_text()
    monitors = (one("ServiceMonitor")["spec"]["endpoints"], one("PodMonitor")["spec"]["podMetricsEndpoints"])
    for (endpoint,) in monitors:
        assert endpoint["scheme"] == "https"
        assert endpoint["tlsConfig"]["serverName"] and "insecureSkipVerify" not in endpoint["tlsConfig"]
        auth = endpoint["basicAuth"]
        assert auth["username"]["name"] == auth["password"]["name"]
        for secret in (auth["username"]["name"], endpoint["tlsConfig"]["ca"]["secret"]["name"]):
            assert f"`{secret}`" in readme, secret
    # The exporter's certificate names the Service its ServiceMonitor checks it against.
    service = one("Service")["metadata"]
    assert one("ServiceMonitor")["spec"]["endpoints"][0]["tlsConfig"]["serverName"] == (
        f"{service['name']}.{service['namespace']}.svc")


def test_the_dcgm_example_maps_its_labels_onto_the_join_key():
    (endpoint,) = one("ServiceMonitor", EXAMPLE_OBJECTS)["spec"]["endpoints"]
    assert endpoint["interval"] == "1s"
    mapped = {tuple(r["sourceLabels"]): r["targetLabel"] for r in endpoint["metricRelabelings"]
              if r["action"] == "replace"}
    assert mapped[("UUID",)] == "uuid"  # rle_device_info's join label; train_run_info carries gpu_uuid
    text = (KDIR / "examples" / "dcgm-exporter-servicemonitor.yaml").read_text()
    assert "--hardware-source dcgm" in text and "-c 1000" in text  # points to the analysis's own dcgm source


# ------------------------------------------------------------ the analysis: shards on many nodes, pooled
def _shell_argv(container: dict, env: dict[str, str]) -> list[str]:
    """The analysis's arguments as the container's shell makes them (its script run by a real sh with the
    container's env, printing each argument instead of starting the command)."""
    assert container["command"] == ["sh", "-c"]
    (script,) = container["args"]
    assert script.startswith("exec thermograd-analysis ")
    printing = script.replace("exec thermograd-analysis", "printf '%s\\n'", 1)
    result = subprocess.run(["sh", "-c", printing], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                            text=True, timeout=10, check=True)
    return result.stdout.splitlines()


def _claim_mounted_at(pod: dict, path: Path) -> str:
    """The PersistentVolumeClaim behind `path` in the pod's (only) container."""
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume["persistentVolumeClaim"]["claimName"]


def test_the_indexed_job_runs_each_shard_once_and_the_pool_job_reads_their_volume():
    from thermograd.analysis.arguments import shard_flag
    from thermograd.analysis.cli import build_parser

    shard_objects, (pool_job,) = load_all(KDIR / "examples" / "analysis-shards.yaml"), load_all(
        KDIR / "examples" / "analysis-pool.yaml")
    claim, shards_job = one("PersistentVolumeClaim", shard_objects), one("Job", shard_objects)
    spec = shards_job["spec"]
    assert spec["completionMode"] == "Indexed" and 1 <= spec["parallelism"] <= spec["completions"]
    (container,) = spec["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    parser = build_parser()
    shard_args = [parser.parse_args(_shell_argv(container, {**env, "JOB_COMPLETION_INDEX": str(index)}))
                  for index in range(spec["completions"])]
    n = spec["completions"]
    assert [shard_flag(args.shard) for args in shard_args] == [(k, n) for k in range(1, n + 1)]
    assert all(args.all_runs and args.end == env["END"] and args.out == shard_args[0].out for args in shard_args)
    (pool,) = pool_job["spec"]["template"]["spec"]["containers"]
    assert pool["command"] == ["thermograd-analysis"]
    pool_args = parser.parse_args(pool["args"])
    assert pool_args.pool_shards == [shard_args[0].out]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # the shards' pods write to it at once, on any node
    for job, path in ((shards_job, shard_args[0].out), (pool_job, pool_args.pool_shards[0]),
                      (pool_job, pool_args.out)):
        assert _claim_mounted_at(job["spec"]["template"]["spec"], path) == claim["metadata"]["name"]


# ------------------------------------------------------------------------------------------ Grafana
def test_every_dashboard_is_a_configmap_for_the_sidecar():
    maps = {obj["metadata"]["name"]: obj for obj in OBJECTS if obj["kind"] == "ConfigMap"
            and obj["metadata"]["labels"].get("grafana_dashboard") == "1"}
    files = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    assert sorted(maps) == [f"thermograd-dashboard-{path.stem}" for path in files]
    for path in files:
        assert maps[f"thermograd-dashboard-{path.stem}"]["data"] == {path.name: path.read_text()}


def test_the_dashboards_datasource_uid_is_provisioned_by_the_datasource_configmap():
    (datasources,) = [obj for obj in OBJECTS if obj["kind"] == "ConfigMap"
                      and obj["metadata"]["labels"].get("grafana_datasource") == "1"]
    (text,) = datasources["data"].values()
    provisioned = {source["uid"]: source for source in yaml.safe_load(text)["datasources"]}
    uid = build_dashboards.DATASOURCE["uid"]
    assert provisioned[uid]["url"].startswith("http://") and provisioned[uid]["isDefault"] is False
    for path in (ROOT / "grafana" / "dashboards").glob("*.json"):
        used = {target["datasource"]["uid"] for panel in json.loads(path.read_text())["panels"]
                for target in panel.get("targets", [])}
        assert used == {uid}, path.name


def test_the_readme_documents_kubectl_apply_k():
    assert "kubectl apply -k deploy/kubernetes" in (ROOT / "docs" / "stack.md").read_text()
    assert "kubectl apply -k deploy/kubernetes" in (KDIR / "README.md").read_text()
