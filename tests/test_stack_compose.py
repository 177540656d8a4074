"""docker-compose.yml, its no-GPU override and the Dockerfiles, validated statically.

No Docker engine runs here, so the files are checked against the Compose Specification's JSON schema
(vendored in tests/data/, see its NOTICE) and against the stack's own rules: pinned images, read-only
config mounts whose host paths exist, only Grafana and Prometheus published and on 127.0.0.1, a
Grafana password that must come from the environment, healthchecks, depends_on conditions, GPU
reservations. The same services run natively in tests/test_stack_integration.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
BASE = ROOT / "docker-compose.yml"
NOGPU = ROOT / "docker-compose.nogpu.yml"
PUBLISHED = {"grafana", "prometheus", "victoriametrics"}  # the query endpoints (VictoriaMetrics: --profile longterm)
PROFILES = {"victoriametrics": ["longterm"]}  # services that start only with `--profile NAME`
OWN_SERVICES = {"exporter", "trainer"}


class Reset:
    """Compose's `!reset` tag: the override removes the key."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_object(node, deep=True)
                              if not isinstance(node, yaml.ScalarNode) else loader.construct_scalar(node))


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass


def merge(base: object, override: object) -> object:
    """Compose's merge for what the override uses: mappings merge, `!reset` deletes, the rest replaces."""
    if isinstance(override, dict) and isinstance(base, dict | None):
        merged = dict(base or {})
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            else:
                merged[key] = merge(merged.get(key), value)
        return merged
    return override


_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class InterpolationError(ValueError):
    pass


def interpolate(value: object, env: dict[str, str]) -> object:
    """Compose variable interpolation: ${V}, ${V:-default}, ${V-default}, ${V:?error}, ${V?error}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op in (":?", "?"):
            raise InterpolationError(f"{name}: {arg}")
        return arg if op in (":-", "-") else ""

    return _VAR.sub(substitute, value)


@pytest.fixture(scope="module")
def base() -> dict:
    return load(BASE)


@pytest.fixture(scope="module")
def nogpu(base: dict) -> dict:
    return merge(base, load(NOGPU))


def validate(document: dict) -> None:
    jsonschema.Draft201909Validator(SCHEMA).validate(document)


def test_compose_files_match_the_compose_specification(base: dict, nogpu: dict):
    validate(base)
    validate(nogpu)
    validate(merge({}, load(NOGPU)))  # the override alone is a valid (partial) compose file too
    assert {name for name, svc in base["services"].items() if not svc.get("profiles")} == {
        "exporter", "trainer", "prometheus", "alertmanager", "grafana"}
    assert {name: svc["profiles"] for name, svc in base["services"].items() if svc.get("profiles")} == PROFILES


def test_the_schema_check_rejects_a_broken_service(base: dict):
    broken = merge(base, {"services": {"grafana": {"depends_on": {"prometheus": {"condition": "when_ready"}}}}})
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_grafana_refuses_to_start_without_an_admin_password(base: dict):
    with pytest.raises(InterpolationError, match="GF_ADMIN_PASSWORD"):
        interpolate(base, {})
    resolved = interpolate(base, {"GF_ADMIN_PASSWORD": "s3cret"})
    assert resolved["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    text = BASE.read_text()
    assert "admin/admin" not in text and not re.search(r"GF_SECURITY_ADMIN_PASSWORD:\s*[\"']?admin", text)


def test_only_the_query_endpoints_are_published_on_loopback(base: dict):
    services = interpolate(base, {"GF_ADMIN_PASSWORD": "x"})["services"]
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == PUBLISHED
    for name in PUBLISHED:
        for port in services[name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_images_are_pinned(base: dict, nogpu: dict):
    for document in (base, nogpu):
        for name, service in document["services"].items():
            image = service["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest", f"{name}: image {image} is not pinned"
            assert re.match(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"


def _bind_mounts(service: dict) -> list[tuple[Path, str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append(((ROOT / source).resolve(), target, mode[0] if mode else "rw"))
    return mounts


def test_bind_mounts_exist_and_are_read_only(base: dict):
    seen = 0
    for name, service in base["services"].items():
        for host, target, mode in _bind_mounts(service):
            seen += 1
            assert host.exists(), f"{name}: mounted path {host} does not exist"
            assert mode == "ro", f"{name}: {host} -> {target} must be mounted read-only"
    assert seen >= 4


@pytest.mark.parametrize("env", [{}, {"THERMOGRAD_PROMETHEUS_CONFIG": "prometheus-longterm.yml"},
                                 {"THERMOGRAD_PROMETHEUS_CONFIG": "prometheus-tls.yml"}],
                         ids=["default", "longterm", "tls"])
def test_paths_named_in_commands_exist_in_their_mounts(base: dict, env: dict[str, str]):
    """`--config.file=/etc/prometheus/prometheus.yml` must be a file of the mounted ./prometheus."""
    checked = 0
    for service in interpolate(base, {"GF_ADMIN_PASSWORD": "x", **env})["services"].values():
        words = [*service.get("command", []), *map(str, service.get("environment", {}).values())]
        for word in words:
            path = word.split("=", 1)[-1]
            for host, target, _ in _bind_mounts(service):
                if path.startswith(target + "/"):
                    checked += 1
                    assert (host / path[len(target) + 1:]).exists(), f"{path} is not in {host}"
    assert checked >= 3


def test_named_volumes_hold_the_tsdb_and_grafana_state(base: dict):
    declared = set(base["volumes"])
    def named(service: str) -> dict[str, str]:
        return {v.split(":")[1]: v.split(":")[0] for v in base["services"][service]["volumes"]
                if not v.startswith((".", "/"))}
    assert named("prometheus")["/prometheus"] in declared
    assert named("grafana")["/var/lib/grafana"] in declared


def test_healthchecks_and_dependency_conditions(base: dict):
    services = base["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services and spec["condition"] == "service_healthy", (name, dependency)
    assert "prometheus" in services["grafana"]["depends_on"]
    assert {"exporter", "prometheus"} <= set(services["trainer"]["depends_on"])


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_gpu_reservation_and_the_no_gpu_override(base: dict, nogpu: dict):
    for name in OWN_SERVICES:
        devices = _gpu_devices(base["services"][name])
        assert devices and "gpu" in devices[0]["capabilities"] and devices[0]["driver"] == "nvidia"
        assert not _gpu_devices(nogpu["services"][name]), f"{name} still reserves a GPU without one"
    exporter, trainer = nogpu["services"]["exporter"]["command"], nogpu["services"]["trainer"]["command"]
    assert exporter[exporter.index("--backend") + 1] == "sim"
    assert trainer[trainer.index("--device") + 1] == "cpu"
    assert trainer[trainer.index("--gpu-uuid") + 1] == "sim-0"
    assert nogpu["services"]["trainer"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert base["services"]["trainer"]["build"]["args"]["TORCH_VARIANT"].startswith("cu")


def _stages(dockerfile: Path) -> list[list[str]]:
    """Instructions (continuation lines joined, comments dropped) grouped by build stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("service", sorted(OWN_SERVICES))
def test_dockerfiles_slim_pinned_multistage_non_root(base: dict, service: str):
    build = base["services"][service]["build"]
    assert_slim_pinned_multistage_non_root(ROOT / build["context"] / build["dockerfile"])


def test_the_analysis_image_of_the_kubernetes_examples_is_built_here():
    """No compose service runs the analysis; the Kubernetes examples do, from docker/analysis.Dockerfile."""
    dockerfile = ROOT / "docker" / "analysis.Dockerfile"
    assert_slim_pinned_multistage_non_root(dockerfile)
    text = dockerfile.read_text()
    assert 'pip install ".[analysis]"' in text and "torch" not in text.split("FROM")[1].split("RUN", 1)[1]
    assert _entrypoint(dockerfile) == ["thermograd-analysis"]
    tag = re.search(r"docker build -f docker/analysis.Dockerfile -t (\S+) \.", text).group(1)
    for example in ("analysis-shards.yaml", "analysis-pool.yaml"):
        images = [c["image"] for doc in yaml.safe_load_all((ROOT / "deploy/kubernetes/examples" / example).read_text())
                  if doc and doc.get("kind") == "Job" for c in doc["spec"]["template"]["spec"]["containers"]]
        assert images == [tag], (example, images)


def assert_slim_pinned_multistage_non_root(dockerfile: Path) -> None:
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    base_image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base_image), base_image
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "not multi-stage"
    final = stages[-1]
    assert any(line.startswith("COPY --from=") for line in final)
    user = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in {"0", "root"}, "final stage runs as root"
    final_text = " ".join(final)
    for tool in ("build-essential", "gcc", "g++", "pip install", "apt-get install"):
        assert tool not in final_text, f"final stage of {dockerfile.name} installs/uses {tool}"


def test_trainer_image_picks_the_torch_wheel_by_build_arg():
    text = (ROOT / "docker" / "trainer.Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_VARIANT=cu\d+$", text, flags=re.M)
    assert re.search(r"--index-url \S*\$\{TORCH_VARIANT\}", text)


# --------------------------------------------------------------- TLS and basic auth (docker-compose.tls.yml)
TLS = ROOT / "docker-compose.tls.yml"


def _entrypoint(dockerfile: Path) -> list[str]:
    return json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile.read_text(), flags=re.M).group(1))


def test_the_tls_override_adds_the_web_config_to_both_endpoints(base: dict):
    override = load(TLS)
    validate(merge(base, override))
    validate(merge({}, override))
    tls = merge(base, override)
    for name in OWN_SERVICES:
        service, build = tls["services"][name], base["services"][name]["build"]
        # the image's own entrypoint plus the flag: the base file's command (and nogpu's) still applies
        image_entrypoint = _entrypoint(ROOT / build["context"] / build["dockerfile"])
        assert service["entrypoint"][:len(image_entrypoint)] == image_entrypoint, name
        flag = service["entrypoint"][len(image_entrypoint):]
        assert flag[0] == "--web.config.file" and flag[1] == "/run/secrets/web-config.yml", name
        assert {"web-config.yml", "server.pem", "server-key.pem"} <= set(service["secrets"]), name
        probe = " ".join(service["healthcheck"]["test"])
        assert "https://127.0.0.1:" in probe and "/healthz" in probe, name  # /healthz needs no password
    for secret in tls["secrets"].values():
        assert secret["file"].startswith("./tls/"), secret  # never committed (.gitignore)
    assert "/tls/" in (ROOT / ".gitignore").read_text().split()


def test_prometheus_gets_the_files_prometheus_tls_yml_names(base: dict):
    tls = merge(base, load(TLS))
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus-tls.yml").read_text())
    named = {Path(path).name for job in config["scrape_configs"] if job.get("scheme") == "https"
             for path in (*job["tls_config"].values(), job["basic_auth"]["password_file"])}
    assert named and named <= set(tls["services"]["prometheus"]["secrets"]) <= set(tls["secrets"])
    assert "THERMOGRAD_PROMETHEUS_CONFIG=prometheus-tls.yml" in TLS.read_text()  # how to run it
