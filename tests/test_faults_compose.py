"""Fault suite, containers: what a container in the compose network (or the LAN with
THERMOGRAD_BIND=0.0.0.0) could do to the stack. Static: no Docker engine runs here; the same files are
validated against the Compose schema in tests/test_stack_compose.py."""

from __future__ import annotations

import pytest
from test_stack_compose import BASE, NOGPU, load, merge, validate

SERVICES = ("exporter", "trainer", "prometheus", "alertmanager", "grafana", "victoriametrics")


@pytest.fixture(scope="module", params=["gpu", "nogpu"])
def services(request) -> dict:
    document = load(BASE) if request.param == "gpu" else merge(load(BASE), load(NOGPU))
    validate(document)
    return document["services"]


def test_prometheus_cannot_be_stopped_or_reloaded_over_http(services: dict):
    # Before: --web.enable-lifecycle let anyone who reaches :9090 POST /-/quit or /-/reload.
    assert not any("enable-lifecycle" in word for word in services["prometheus"]["command"])


def test_alertmanager_gossip_is_off(services: dict):
    # Before: cluster gossip listened on 0.0.0.0:9094 for peers that do not exist.
    assert "--cluster.listen-address=" in services["alertmanager"]["command"]


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_is_read_only_without_capabilities_and_memory_limited(services: dict, name: str):
    service = services[name]
    assert service.get("read_only") is True, name
    assert service.get("cap_drop") == ["ALL"], name
    assert "no-new-privileges:true" in service.get("security_opt", []), name
    assert service.get("mem_limit"), name
    assert "/tmp" in service.get("tmpfs", []), name  # scratch space on a read-only root
    # everything the service writes lives on a named volume (writable despite read_only)
    writable = [v for v in service.get("volumes", []) if not v.startswith((".", "/")) and not v.endswith(":ro")]
    assert name in {"exporter"} or writable, f"{name} has nowhere to write"
