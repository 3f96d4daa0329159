"""deploy/k8s/overlays/workers: the base with dedicated job workers. Rendered by kubectl's kustomize and validated
strictly against Kubernetes' schemas; the worker Deployment runs ``thinktank worker`` with the server's image,
settings, Secret, config, security context and volumes, and the servers get ``THINKTANK_WORKER=false``. Then for
real: a server and a worker started with their pods' environments on one PostgreSQL and Redis; the server queues
an ingestion, the worker passes its probes and runs it."""

from __future__ import annotations

import asyncio
import copy
import inspect
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from thinktank.jobs.postgres import PgQueue
from thinktank.settings import Settings

from ..fakes.databases import drop_pg, make_empty_pg
from ..fakes.process import clean_env, free_port
from .artefacts import (
    K8S_BASE,
    K8S_WORKERS,
    KUBERNETES_VERSIONS,
    configmap_named_by,
    dockerfile,
    final_stage,
    named,
    render,
    thinktank_command,
    unknown_settings,
    validate,
)
from .checks import on_port, passes, start, stop, until_passes

SERVER, WORKER = "thinktank", "thinktank-worker"


@pytest.fixture(scope="module")
def workers() -> list[dict[str, Any]]:
    return render(K8S_WORKERS)


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(K8S_BASE)


def _pod(manifests: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = named(manifests, "Deployment", name)["spec"]["template"]["spec"]
    return spec


def _container(manifests: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (container,) = _pod(manifests, name)["containers"]
    result: dict[str, Any] = container
    return result


def _literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _metrics_port(container: dict[str, Any]) -> int:
    name, params = thinktank_command([*container["command"], *container["args"]])
    assert name == "worker"
    port = params["metrics_port"]
    assert isinstance(port, int)
    return port


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_kubernetes(workers: list[dict[str, Any]], version: str) -> None:
    for manifest in workers:
        validate(manifest, version)
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in workers if m["kind"] != "ConfigMap")
    assert kinds == [("Deployment", SERVER), ("Deployment", WORKER), ("HorizontalPodAutoscaler", SERVER),
                     ("PodDisruptionBudget", SERVER), ("PodDisruptionBudget", WORKER), ("Service", SERVER)]


def test_the_overlay_adds_the_workers_to_the_base_and_changes_nothing_else_of_it(
    base: list[dict[str, Any]], workers: list[dict[str, Any]],
) -> None:
    for manifest in base:
        rendered = copy.deepcopy(named(workers, manifest["kind"], manifest["metadata"]["name"]))
        if manifest["kind"] == "Deployment":  # but the servers' THINKTANK_WORKER
            (c,) = rendered["spec"]["template"]["spec"]["containers"]
            added = [e for e in c["env"] if e["name"] == "THINKTANK_WORKER"]
            assert added == [{"name": "THINKTANK_WORKER", "value": "false"}]
            c["env"].remove(added[0])
        assert rendered == manifest


def test_the_worker_runs_thinktank_worker_as_the_server_runs(workers: list[dict[str, Any]]) -> None:
    server, worker = _container(workers, SERVER), _container(workers, WORKER)
    assert worker["command"] == ["thinktank", "worker"]
    assert worker["image"] == server["image"] and worker["imagePullPolicy"] == server["imagePullPolicy"]
    # The server's settings, Secret references and config, every one of them.
    assert worker["envFrom"] == server["envFrom"]
    server_env = [e for e in server["env"] if e["name"] != "THINKTANK_WORKER"]
    assert [e for e in worker["env"] if e in server_env] == server_env
    assert worker["securityContext"] == server["securityContext"]
    assert worker["volumeMounts"] == server["volumeMounts"]
    server_pod, worker_pod = _pod(workers, SERVER), _pod(workers, WORKER)
    for field in ("securityContext", "volumes", "enableServiceLinks", "automountServiceAccountToken"):
        assert worker_pod[field] == server_pod[field], field
    assert worker_pod["enableServiceLinks"] is False  # THINKTANK_PORT=tcp://... would stop it (test_kubernetes.py)
    assert worker["resources"]["requests"] and worker["resources"]["limits"]
    # SIGKILL comes after the queue's own allowance for the jobs under way.
    grace = inspect.signature(PgQueue.__init__).parameters["grace"].default
    assert worker_pod["terminationGracePeriodSeconds"] > grace + 5


def test_settings_it_names_are_real(workers: list[dict[str, Any]]) -> None:
    for name in (SERVER, WORKER):
        c = _container(workers, name)
        names = {e["name"] for e in c["env"]}
        names |= set(configmap_named_by(workers, c["envFrom"][0]["configMapRef"]["name"])["data"])
        assert unknown_settings(names) == set()


def test_the_servers_leave_jobs_and_new_runs_to_the_workers(workers: list[dict[str, Any]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    server, worker = _container(workers, SERVER), _container(workers, WORKER)
    for name, value in _literal_env(server).items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.worker is False and settings.run_placement == "auto"  # auto: queue, when it runs no jobs
    assert "THINKTANK_WORKER" not in _literal_env(worker)
    shared = configmap_named_by(workers, server["envFrom"][0]["configMapRef"]["name"])["data"]
    assert "THINKTANK_WORKER" not in shared and "THINKTANK_RUN_PLACEMENT" not in shared


def test_the_worker_pods_are_apart_from_the_servers(workers: list[dict[str, Any]]) -> None:
    deployment = named(workers, "Deployment", WORKER)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    server_labels = named(workers, "Deployment", SERVER)["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] == 2
    # The Service, the server's PodDisruptionBudget and the autoscaler leave the workers alone, and the other way.
    assert not named(workers, "Service", SERVER)["spec"]["selector"].items() <= labels.items()
    server_budget = named(workers, "PodDisruptionBudget", SERVER)["spec"]
    assert not server_budget["selector"]["matchLabels"].items() <= labels.items()
    assert named(workers, "HorizontalPodAutoscaler", SERVER)["spec"]["scaleTargetRef"]["name"] == SERVER
    budget = named(workers, "PodDisruptionBudget", WORKER)["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert not budget["selector"]["matchLabels"].items() <= server_labels.items()
    assert 0 < budget["minAvailable"] < deployment["spec"]["replicas"]  # a drain may move one at a time


def test_the_workers_probes_ask_its_metrics_port(workers: list[dict[str, Any]]) -> None:
    worker = _container(workers, WORKER)
    port = _metrics_port(worker)
    assert worker["ports"] == [{"name": "metrics", "containerPort": port}]
    assert _literal_env(worker)["THINKTANK_METRICS_HOST"] == "0.0.0.0"  # reachable by a scrape, not only locally
    assert "readinessProbe" not in worker  # no Service sends it traffic
    for probe in ("startupProbe", "livenessProbe"):
        command = worker[probe]["exec"]["command"]
        assert command[:2] == ["python", "-c"] and f"'127.0.0.1', {port}," in command[2], probe


def _pod_env(manifests: list[dict[str, Any]], name: str, secret: dict[str, str], root: Path) -> dict[str, str]:
    """A container's environment as Kubernetes gives it (the ConfigMap's settings, its literal values, the Secret's
    values), on this machine: its own data directory and the ConfigMap's config written under ``root``."""
    c = _container(manifests, name)
    env = {**clean_env(root), **configmap_named_by(manifests, c["envFrom"][0]["configMapRef"]["name"])["data"],
           **_literal_env(c)}
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None and ref["key"] in secret:
            env[e["name"]] = secret[ref["key"]]
        elif ref is not None:
            assert ref.get("optional"), e
    in_pod = Path(env["THINKTANK_CONFIG"])
    (mount,) = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == in_pod.parent]
    (volume,) = [v for v in _pod(manifests, name)["volumes"] if v["name"] == mount["name"]]
    config = root / in_pod.name
    config.write_text(configmap_named_by(manifests, volume["configMap"]["name"])["data"][in_pod.name])
    return {**env, "THINKTANK_CONFIG": str(config), "THINKTANK_DATA_DIR": str(root / "data")}


def _ingested(url: str, token: str) -> float:
    r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return sum(s.value for f in text_string_to_metric_families(r.text) if f.name == "thinktank_ingested_documents"
               for s in f.samples if s.name.endswith("_total") and s.labels["status"] == "added")


def _until(what: str, seconds: float, found: Any) -> Any:
    deadline = time.monotonic() + seconds
    while (value := found()) is None or value is False:
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.1)
    return value


def test_a_server_queues_an_ingestion_and_a_worker_started_as_its_pod_passes_its_probes_and_runs_it(
    workers: list[dict[str, Any]], tmp_path: Path, redis_url: str,
) -> None:
    admin, token = "tt-admin-workers-test", "made-up-metrics-token"
    auth = {"Authorization": f"Bearer {admin}"}
    db_name, database_url = asyncio.run(make_empty_pg())
    secret = {"admin-key": admin, "database-url": database_url, "redis-url": redis_url, "metrics-token": token,
              "openai-api-key": "made-up-openai-key", "anthropic-api-key": "made-up-anthropic-key"}
    (tmp_path / "server").mkdir()
    (tmp_path / "worker").mkdir()
    server_env = {**_pod_env(workers, SERVER, secret, tmp_path / "server"), "THINKTANK_PORT": str(free_port()),
                  # This machine reaches no provider: readiness here stands on the database and Redis.
                  "THINKTANK_READY_UPSTREAMS": "none"}
    url = f"http://127.0.0.1:{server_env['THINKTANK_PORT']}"
    worker = _container(workers, WORKER)
    port, free = _metrics_port(worker), free_port()
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    (image_cmd,) = [i.exec_form() for i in final_stage(dockerfile()) if i.keyword == "CMD"]
    server_proc = start(image_cmd, server_env, server_log)
    worker_proc = None
    try:
        _until("the server's /ready", 300, lambda: _ready(url, server_proc, server_log))
        kb = httpx.post(url + "/api/v1/knowledge-bases", headers=auth, json={"name": "notes"}, timeout=10).json()
        documents = [{"name": f"note-{i}.md", "text": f"# Note {i}\n\nThe kettle number {i} sings at dawn."}
                     for i in range(5)]
        r = httpx.post(f"{url}/api/v1/knowledge-bases/{kb['id']}/documents", json={"documents": documents},
                       headers=auth | {"Prefer": "respond-async"}, timeout=60)
        assert r.status_code == 202, r.text
        location = url + r.headers["location"]
        assert httpx.get(location, headers=auth, timeout=10).json()["status"] == "queued"  # nobody runs jobs yet

        worker_env = _pod_env(workers, WORKER, secret, tmp_path / "worker")
        worker_proc = start(on_port([*worker["command"], *worker["args"]], port, free), worker_env, worker_log)
        startup, liveness = worker["startupProbe"], worker["livenessProbe"]
        until_passes(on_port(startup["exec"]["command"], port, free), worker_proc, worker_log,
                     timeout=startup["timeoutSeconds"],
                     allowance=startup["periodSeconds"] * startup["failureThreshold"])
        assert passes(on_port(liveness["exec"]["command"], port, free), liveness["timeoutSeconds"])

        job = _until("the ingestion", 120, lambda: _ended(location, auth))
        assert (job["status"], job["counts"]["added"]) == ("succeeded", 5), job
        # The worker ingested them (its metrics, read with the Secret's token), the server none.
        assert _ingested(f"http://127.0.0.1:{free}/metrics", token) == 5
        assert _ingested(url + "/metrics", token) == 0
        assert httpx.get(f"http://127.0.0.1:{free}/metrics", timeout=10).status_code == 401  # the token is needed

        err = stop(worker_proc, worker_log, _pod(workers, WORKER)["terminationGracePeriodSeconds"])
        assert "thinktank worker: running jobs from the postgres queue, 8 at once" in err
        assert not passes(on_port(liveness["exec"]["command"], port, free), liveness["timeoutSeconds"])
        err = stop(server_proc, server_log, _pod(workers, SERVER)["terminationGracePeriodSeconds"], server=True)
        assert "Application shutdown complete." in err
    finally:
        for proc in (server_proc, worker_proc):
            if proc is not None:
                proc.kill()
                proc.wait()
        asyncio.run(drop_pg(db_name))


def _ready(url: str, proc: subprocess.Popen[str], log: Path) -> bool:
    assert proc.poll() is None, log.read_text()
    try:
        return httpx.get(url + "/ready", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _ended(location: str, auth: dict[str, str]) -> dict[str, Any] | None:
    job: dict[str, Any] = httpx.get(location, headers=auth, timeout=10).json()
    return job if job["status"] in ("succeeded", "failed") else None
