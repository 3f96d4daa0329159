"""deploy/k8s: the kustomize base and the example overlay, rendered by kubectl's kustomize, validated against
Kubernetes' OpenAPI schemas (kubernetes-validate's copies, offline, strict: no unknown field), and consistent
with thinktank: the config in the ConfigMap loads, the settings exist, every key the config names is set, and a
server started with the pod's environment and config answers the probes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import ValidationError

from thinktank.config import load_config
from thinktank.settings import Settings

from ..fakes.databases import drop_pg, make_empty_pg
from ..fakes.process import clean_env, free_port
from .artefacts import (
    K8S_BASE,
    K8S_OVERLAY,
    KUBERNETES_VERSIONS,
    configmap_named_by,
    container,
    dockerfile,
    env_of,
    final_stage,
    one,
    render,
    unknown_settings,
    validate,
)


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(K8S_BASE)


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return render(K8S_OVERLAY)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_kubernetes(base: list[dict[str, Any]], overlay: list[dict[str, Any]],
                                            version: str) -> None:
    example_secret = yaml.safe_load((K8S_OVERLAY / "secret.example.yaml").read_text())
    kinds = set()
    for manifest in [*base, *overlay, example_secret]:
        validate(manifest, version)  # an unknown kind or apiVersion raises SchemaNotFoundError: a failure too
        kinds.add(manifest["kind"])
    assert kinds == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                     "Namespace", "Secret"}


def test_the_validation_does_reject_a_wrong_manifest(base: list[dict[str, Any]]) -> None:
    """Strict: a misspelled field fails (the check above is the schema's judgement)."""
    deployment = yaml.safe_load(yaml.safe_dump(one(base, "Deployment")))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGett"] = probe.pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError, match="httpGett"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_overlay_changes_what_it_says(base: list[dict[str, Any]], overlay: list[dict[str, Any]]) -> None:
    assert {m["metadata"].get("namespace") for m in overlay if m["kind"] != "Namespace"} == {"thinktank"}
    assert container(overlay)["image"] == "registry.example.com/thinktank:0.1.0"
    assert container(base)["image"] == "thinktank"
    assert one(overlay, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3
    env_name = container(overlay)["envFrom"][0]["configMapRef"]["name"]
    assert configmap_named_by(overlay, env_name)["data"]["THINKTANK_LOG_LEVEL"] == "warning"


def _pod_spec(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_the_pod_runs_as_the_images_user_on_a_read_only_root(base: list[dict[str, Any]]) -> None:
    pod = _pod_spec(base)
    (user,) = [i.args for i in final_stage(dockerfile()) if i.keyword == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    assert pod["securityContext"]["fsGroup"] == gid
    security = container(base)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # What thinktank writes has a writable volume: the data directory and the temporary directory.
    mounts = {m["mountPath"]: m for m in container(base)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    data_dir = env_of(final_stage(dockerfile()))["THINKTANK_DATA_DIR"]
    env = configmap_named_by(base, container(base)["envFrom"][0]["configMapRef"]["name"])["data"]
    assert env["THINKTANK_DATA_DIR"] == data_dir
    for path in (data_dir, "/tmp"):
        assert "emptyDir" in volumes[mounts[path]["name"]] and not mounts[path].get("readOnly")


def test_the_pod_has_no_service_links(base: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A Service named thinktank makes Kubernetes put THINKTANK_PORT=tcp://<ip>:<port> (and
    THINKTANK_SERVICE_HOST, ...) in every pod's environment, where thinktank reads its own THINKTANK_PORT:
    the pod must turn the links off."""
    service = one(base, "Service")
    name = service["metadata"]["name"].upper().replace("-", "_")
    monkeypatch.setenv(f"{name}_PORT", f"tcp://10.0.0.1:{service['spec']['ports'][0]['port']}")
    with pytest.raises(ValidationError, match="port"):
        Settings()
    assert _pod_spec(base)["enableServiceLinks"] is False


def test_ports_and_probes_match_the_image(base: list[dict[str, Any]]) -> None:
    final = final_stage(dockerfile())
    (expose,) = [i.args for i in final if i.keyword == "EXPOSE"]
    c = container(base)
    (port,) = c["ports"]
    assert port == {"name": "http", "containerPort": int(expose)}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    service = one(base, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert one(base, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "command" not in c and "args" not in c  # the image's own command


def test_autoscaling_owns_the_replica_count(base: list[dict[str, Any]]) -> None:
    hpa = one(base, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "thinktank"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in one(base, "Deployment")["spec"]
    assert container(base)["resources"]["requests"]["cpu"]  # utilisation is relative to the request


def _secret_refs(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Environment variable -> its secretKeyRef."""
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(manifests).get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def _environment_names(manifests: list[dict[str, Any]]) -> set[str]:
    c = container(manifests)
    names = {e["name"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        names |= set(configmap_named_by(manifests, source["configMapRef"]["name"])["data"])
    return names


def test_settings_it_names_are_real(base: list[dict[str, Any]], overlay: list[dict[str, Any]]) -> None:
    for manifests in (base, overlay):
        names = _environment_names(manifests)
        assert {"THINKTANK_CONFIG", "THINKTANK_DATABASE_URL", "THINKTANK_REDIS_URL",
                "THINKTANK_ADMIN_KEY"} <= names
        assert unknown_settings(names) == set()


def test_secrets_are_references_to_the_operators_secret(base: list[dict[str, Any]]) -> None:
    assert not [m for m in base if m["kind"] == "Secret"]  # no value in the base
    refs = _secret_refs(base)
    for name in ("THINKTANK_ADMIN_KEY", "THINKTANK_DATABASE_URL", "THINKTANK_REDIS_URL"):
        assert refs[name]["name"] == "thinktank" and not refs[name].get("optional"), name
    # Everything the pod takes from the Secret is in the example one.
    example = yaml.safe_load((K8S_OVERLAY / "secret.example.yaml").read_text())
    assert example["metadata"]["name"] == "thinktank"
    assert {r["key"] for r in refs.values()} == set(example["stringData"])
    env = configmap_named_by(base, container(base)["envFrom"][0]["configMapRef"]["name"])["data"]
    assert not {k for k in env if any(w in k for w in ("KEY", "PASSWORD", "TOKEN", "DATABASE_URL"))}


def _config(manifests: list[dict[str, Any]], tmp_path: Path) -> tuple[Path, str]:
    """The gateway config as the pod sees it, written under ``tmp_path``; (its path, THINKTANK_CONFIG)."""
    c = container(manifests)
    env = configmap_named_by(manifests, c["envFrom"][0]["configMapRef"]["name"])["data"]
    in_pod = Path(env["THINKTANK_CONFIG"])
    (mount,) = [m for m in c["volumeMounts"] if in_pod.parent == Path(m["mountPath"])]
    assert mount["readOnly"] is True
    (volume,) = [v for v in _pod_spec(manifests)["volumes"] if v["name"] == mount["name"]]
    data = configmap_named_by(manifests, volume["configMap"]["name"])["data"]
    path = tmp_path / in_pod.name
    path.write_text(data[in_pod.name])
    return path, env["THINKTANK_CONFIG"]


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_the_configmaps_config_loads_and_its_keys_are_set(which: str, request: pytest.FixtureRequest,
                                                          tmp_path: Path) -> None:
    manifests: list[dict[str, Any]] = request.getfixturevalue(which)
    path, _ = _config(manifests, tmp_path)
    config = load_config(path)  # thinktank's own loader: a config error fails here as it would fail the pod
    assert config.models
    keyed = {m.api_key_env for m in config.models if m.api_key_env}
    assert keyed and keyed <= set(_secret_refs(manifests))
    assert all(m.api_key is None for m in config.models)  # keys come from the Secret, never from the ConfigMap


@pytest.fixture
def pod(base: list[dict[str, Any]], tmp_path: Path, redis_url: str) -> Iterator[tuple[str, int]]:
    """The image's command, started with the pod's environment: the ConfigMap's settings and config, the Secret's
    values (a fresh PostgreSQL database, the local Redis, made-up provider keys), on a free port; (URL, models)."""
    config_path, _ = _config(base, tmp_path)
    c = container(base)
    env = {**clean_env(tmp_path), **configmap_named_by(base, c["envFrom"][0]["configMapRef"]["name"])["data"]}
    name, database_url = asyncio.run(make_empty_pg())
    secret = {"admin-key": "tt-admin-pod-test", "database-url": database_url, "redis-url": redis_url}
    for variable, ref in _secret_refs(base).items():
        if ref["key"] in secret:
            env[variable] = secret[ref["key"]]
        elif not ref.get("optional") or variable.endswith("_API_KEY"):
            env[variable] = f"made-up-{ref['key']}"
    env.update({"THINKTANK_CONFIG": str(config_path), "THINKTANK_DATA_DIR": str(tmp_path / "data"),
                "THINKTANK_PORT": str(free_port()),
                # This machine reaches no provider (no internet): readiness here stands on the database and Redis.
                "THINKTANK_READY_UPSTREAMS": "none"})
    (cmd,) = [i.exec_form() for i in final_stage(dockerfile()) if i.keyword == "CMD"]
    proc = subprocess.Popen([sys.executable, "-m", "thinktank", *cmd[1:]], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{env['THINKTANK_PORT']}", len(load_config(config_path).catalog_names())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
        asyncio.run(drop_pg(name))
        assert "Traceback" not in err, err


def test_a_server_with_the_pods_environment_answers_the_probes(pod: tuple[str, int],
                                                               base: list[dict[str, Any]]) -> None:
    url, models = pod
    c = container(base)
    startup = c["startupProbe"]
    deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
    while True:  # as the startup probe does: until /health answers 200, within its allowance
        try:
            if httpx.get(url + startup["httpGet"]["path"], timeout=startup["timeoutSeconds"]).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the startup probe would have given up"
        time.sleep(0.2)
    ready = httpx.get(url + c["readinessProbe"]["httpGet"]["path"], timeout=c["readinessProbe"]["timeoutSeconds"])
    assert ready.status_code == 200, ready.text
    report = ready.json()
    assert report["status"] == "ready" and report["models"] == models
    assert report["checks"]["database"]["status"] == report["checks"]["redis"]["status"] == "ok"
    alive = httpx.get(url + c["livenessProbe"]["httpGet"]["path"], timeout=c["livenessProbe"]["timeoutSeconds"])
    assert alive.json() == {"status": "ok"}
    # The admin key from the Secret is in force; the models are the ConfigMap's.
    listed = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer tt-admin-pod-test"})
    assert listed.status_code == 200
    assert {"gpt-4o", "smart", "ensemble/council"} <= {m["id"] for m in listed.json()["data"]}
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
