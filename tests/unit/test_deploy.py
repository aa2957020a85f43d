"""What the Kubernetes manifests (deploy/) and docker-compose.yml promise, checked on the
rendered output: the worker's grace and preStop drain, probes on real routes, KEDA's query
over real metrics, and settings variables that exist. (`make ops-check` lints and
schema-validates the same files; this adds what no generic schema knows.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from orchestrator.api import create_app
from orchestrator.api.metrics import MetricsSnapshot, WorkerGauges, render
from orchestrator.settings import Settings, env_variable

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod")
# Variables the demo agents module reads (user code, not Settings).
DEMO_VARIABLES = {f"ORCHESTRATOR_DEMO_LLM_{n}" for n in ("URL", "MODEL", "KEY", "KEY_FILE")}

# What this project relies on in a KEDA ScaledObject (written from KEDA's documented
# fields, not KEDA's CRD): a typo in a field, or a number where KEDA wants a string
# (trigger metadata is a map of strings), fails here instead of at `kubectl apply`.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


@cache
def rendered(overlay: str) -> dict[tuple[str, str], dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (make ops-check needs it too)")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}


def _config(overlay: str) -> dict[str, str]:
    (config,) = [d for (kind, _), d in rendered(overlay).items() if kind == "ConfigMap"]
    data: dict[str, str] = config["data"]
    return data


def _container(overlay: str, deployment: str) -> dict[str, Any]:
    container: dict[str, Any] = rendered(overlay)[("Deployment", deployment)]["spec"]["template"][
        "spec"
    ]["containers"][0]
    return container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_grace_covers_the_shutdown_grace_and_prestop_drains(overlay: str) -> None:
    grace = float(_config(overlay)["ORCHESTRATOR_SHUTDOWN_GRACE_S"])
    pod = rendered(overlay)[("Deployment", "orchestrator-worker")]["spec"]["template"]["spec"]
    # The preStop drain waits up to grace + 5 s; then SIGTERM finds nothing to wait for.
    assert pod["terminationGracePeriodSeconds"] == grace + 15
    worker = pod["containers"][0]
    assert worker["lifecycle"]["preStop"]["exec"]["command"] == [
        "orchestrator",
        "worker",
        "--drain",
    ]
    assert worker["livenessProbe"]["exec"]["command"] == ["orchestrator", "worker", "--alive"]
    state_dir = _config(overlay)["ORCHESTRATOR_WORKER_STATE_DIR"]
    assert state_dir in {m["mountPath"] for m in worker["volumeMounts"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_and_service_point_at_real_routes_and_ports(overlay: str) -> None:
    api = _container(overlay, "orchestrator-api")
    routes = set(create_app(Settings()).openapi()["paths"])
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= routes
    assert str(api["ports"][0]["containerPort"]) == _config(overlay)["ORCHESTRATOR_API_PORT"]
    keys_file = {e["name"]: e.get("value") for e in api["env"]}["ORCHESTRATOR_API_KEYS_FILE"]
    assert any(keys_file.startswith(m["mountPath"]) for m in api["volumeMounts"])
    assert api["resources"]["requests"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_workers_on_metrics_the_api_serves(overlay: str) -> None:
    scaled = rendered(overlay)[("ScaledObject", "orchestrator-worker")]
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in rendered(overlay)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["threshold"] == _config(overlay)["ORCHESTRATOR_CONCURRENCY"]
    served = render(
        MetricsSnapshot.from_runs(
            [],
            queue_depth=0,
            runs_by_status={},
            live_workers=1,
            open_api=False,
            workers=[WorkerGauges.from_heartbeat({"worker_id": "w"})],
        )
    )
    used = set(re.findall(r"orchestrator_[a-z_]+", trigger["metadata"]["query"]))
    assert used == {"orchestrator_queue_depth", "orchestrator_worker_busy_slots"}
    for name in used:
        assert f"\n{name}" in served


def _settings_variables() -> set[str]:
    names = {env_variable(field) for field in Settings.model_fields}
    return names | {n + "_FILE" for n in names} | DEMO_VARIABLES


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_orchestrator_variable_in_the_manifests_is_a_setting(overlay: str) -> None:
    used = set(_config(overlay))
    for (kind, _), doc in rendered(overlay).items():
        if kind == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                used |= {e["name"] for e in container.get("env", [])}
    ours = {name for name in used if name.startswith("ORCHESTRATOR_")}
    assert ours
    assert ours <= _settings_variables(), ours - _settings_variables()


def test_compose_workers_scale_and_use_only_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    worker = services["worker"]
    assert "container_name" not in worker  # so `--scale worker=4` works
    assert "ports" not in worker
    assert worker["healthcheck"]["test"][1:] == ["orchestrator", "worker", "--alive"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["healthcheck"]["test"]
    assert services["mock-llm"]["profiles"] == ["scripted"]
    used = {n for s in services.values() for n in (s.get("environment") or {})}
    ours = {n for n in used if n.startswith("ORCHESTRATOR_")}
    assert ours
    assert ours <= _settings_variables(), ours - _settings_variables()
    grace = float(worker["environment"]["ORCHESTRATOR_SHUTDOWN_GRACE_S"])
    assert float(worker["stop_grace_period"].rstrip("s")) > grace


def test_the_readme_runs_the_commands_make_ops_check_validates() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    validated = re.search(r"^OVERLAYS := (.+)$", makefile, re.MULTILINE)
    assert validated is not None
    assert set(validated.group(1).split()) == set(OVERLAYS)
    applied = set(re.findall(r"kubectl apply -k deploy/overlays/(\w+)", readme))
    assert applied == set(OVERLAYS)
    for overlay in applied:
        assert (ROOT / "deploy" / "overlays" / overlay / "kustomization.yaml").exists()
    profiles = set(re.findall(r"docker compose --profile (\w+) up", readme))
    assert profiles
    assert profiles <= {p for s in compose["services"].values() for p in s.get("profiles", [])}
    for profile in profiles:
        assert f"--profile {profile} config -q" in makefile
    assert "--scale worker=4" in readme
