"""deploy/compose.yaml: valid by the Compose specification's JSON schema (check-jsonschema's copy, offline),
and its pieces fit together and fit thinktank: service names and ports in the URLs and the scrape job, health
checks behind every depends_on, settings that exist, mounts where the configs say."""

from __future__ import annotations

import asyncio
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from thinktank.jobs.postgres import PgQueue

from ..fakes.databases import clone_pg, drop_pg
from ..fakes.process import clean_env, free_port
from .artefacts import (
    COMPOSE,
    DEPLOY,
    ROOT,
    compose,
    dockerfile,
    env_example,
    env_of,
    final_stage,
    interpolate,
    thinktank_command,
    thinktank_names,
    tool,
    unknown_settings,
)
from .checks import on_port, passes, start, stop, until_passes


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_valid_by_the_compose_specification() -> None:
    done = _check_jsonschema(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_does_reject_a_wrong_compose_file(tmp_path: Path) -> None:
    """The check above is the schema's judgement, not a validator that lets anything through."""
    cases = {
        "misspelled": (("    depends_on:\n", "    depends:\n"), "('depends' was unexpected)"),
        "unknown_condition": (("condition: service_healthy", "condition: healthy"), "'healthy' is not one of"),
    }
    for name, ((old, new), said) in cases.items():
        wrong = tmp_path / f"{name}.yaml"
        wrong.write_text(COMPOSE.read_text().replace(old, new, 1))
        done = _check_jsonschema(wrong)
        assert done.returncode == 1 and said in done.stdout, done.stdout


def _services() -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    return services


def test_every_dependency_waits_for_a_health_check() -> None:
    services = _services()
    image_checks = any(i.keyword == "HEALTHCHECK" for i in final_stage(dockerfile()))
    for name, service in services.items():
        built_here = service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
        assert "healthcheck" in service or (built_here and image_checks), name
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            assert how == {"condition": "service_healthy"}, (name, dependency)


def test_thinktank_is_built_from_the_repository_with_the_dockerfile() -> None:
    build = _services()["thinktank"]["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def _environment(service: str, values: dict[str, str]) -> dict[str, str]:
    """A service's ``environment``, interpolated with ``values`` as Compose does with deploy/.env's (value by value,
    once the file is read)."""
    env: dict[str, Any] = _services()[service]["environment"]
    return {k: interpolate(str(v), values) for k, v in env.items()}


def _thinktank_environment(service: str = "thinktank") -> dict[str, str]:
    return _environment(service, {name: f"value-of-{name.lower()}" for name in env_example()})


def test_the_urls_name_the_services_as_they_are_configured() -> None:
    services = _services()
    env = _thinktank_environment()
    db = urlsplit(env["THINKTANK_DATABASE_URL"])
    pg = services["postgres"]
    assert db.scheme == "postgresql" and db.hostname == "postgres" and db.port == 5432
    assert db.username == pg["environment"]["POSTGRES_USER"] and db.path == "/" + pg["environment"]["POSTGRES_DB"]
    assert db.password == "value-of-postgres_password"  # the same variable as the server's password
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert pg["image"] == "pgvector/pgvector:pg16"
    redis = urlsplit(env["THINKTANK_REDIS_URL"])
    assert redis.scheme == "redis" and redis.hostname == "redis" and redis.port == 6379
    assert "redis" in services


def test_every_variable_it_reads_is_in_the_example_env_file() -> None:
    """Copying env.example to .env gives every variable the file uses (Compose refuses a missing :? one)."""
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    used |= {s["environment"] for s in compose()["secrets"].values() if "environment" in s}
    assert used <= set(env_example())


def test_settings_it_names_are_real() -> None:
    names = set(_thinktank_environment()) | set(_thinktank_environment("worker")) | set(env_example())
    names |= thinktank_names(COMPOSE.read_text()) | thinktank_names((DEPLOY / "env.example").read_text())
    assert {"THINKTANK_DATABASE_URL", "THINKTANK_REDIS_URL", "THINKTANK_ADMIN_KEY"} <= names
    assert unknown_settings(names) == set()


def test_the_data_volume_is_the_images_data_directory() -> None:
    service = _services()["thinktank"]
    final = final_stage(dockerfile())
    data_dir = env_of(final)["THINKTANK_DATA_DIR"]
    assert f"thinktank-data:{data_dir}" in service["volumes"]
    assert "thinktank-data" in compose()["volumes"]
    # The published port is the one the image serves on.
    (expose,) = [i.args for i in final if i.keyword == "EXPOSE"]
    assert [p.rsplit(":", 1)[1] for p in service["ports"]] == [expose]


def test_the_admin_key_comes_from_the_env_file_not_the_compose_file() -> None:
    service = _services()["thinktank"]
    assert service["env_file"] == [{"path": ".env", "required": True}]
    assert "THINKTANK_ADMIN_KEY" in env_example() and "THINKTANK_ADMIN_KEY" not in service["environment"]
    assert all(not value for name, value in env_example().items() if "KEY" in name or "PASSWORD" in name
               or "TOKEN" in name)  # no example secret that could be deployed as is


def test_monitoring_is_a_profile_of_its_own() -> None:
    services = _services()
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert services["worker"]["profiles"] == ["workers"]
    assert all("profiles" not in services[s] for s in ("thinktank", "postgres", "redis"))


def _mount(service: dict[str, Any], source: str) -> str:
    (target,) = [str(v).split(":")[1] for v in service["volumes"] if str(v).split(":")[0] == source]
    return target


def test_prometheus_scrapes_thinktank_with_the_token() -> None:
    service = _services()["prometheus"]
    config_dir = _mount(service, "./prometheus")
    assert f"--config.file={config_dir}/prometheus.yml" in service["command"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yaml"]  # beside prometheus.yml: deploy/prometheus/alerts.yaml
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (expose,) = [i.args for i in final_stage(dockerfile()) if i.keyword == "EXPOSE"]
    assert job["static_configs"] == [{"targets": [f"thinktank:{expose}"]}]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}
    assert service["secrets"] == ["metrics_token"]
    assert compose()["secrets"]["metrics_token"] == {"environment": "THINKTANK_METRICS_TOKEN"}


def test_prometheus_config_is_valid_for_promtool() -> None:
    promtool = tool("promtool", "apt-get install -y prometheus (Debian's package carries promtool)")
    done = subprocess.run([promtool, "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_is_provisioned_with_prometheus_and_the_dashboards_folder() -> None:
    services = _services()
    grafana = services["grafana"]
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert _mount(grafana, "./grafana/provisioning") == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    url = urlsplit(source["url"])
    assert source["type"] == "prometheus" and url.hostname == "prometheus"
    assert f"127.0.0.1:{url.port}:{url.port}" in services["prometheus"]["ports"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "thinktank.yaml").read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == _mount(grafana, "./grafana")


# -- dedicated job workers (profile workers) --------------------------------------------------------------------


def _metrics_port(command: list[str]) -> int:
    """The port `thinktank worker` serves its metrics on, as the CLI parses its command."""
    name, params = thinktank_command(command)
    assert name == "worker"
    port = params["metrics_port"]
    assert isinstance(port, int)
    return port


def test_the_worker_is_thinktanks_image_running_jobs_with_its_settings() -> None:
    services = _services()
    thinktank, worker = services["thinktank"], services["worker"]
    assert worker["command"][:2] == ["thinktank", "worker"]
    assert (worker["build"], worker["image"]) == (thinktank["build"], thinktank["image"])
    assert worker["env_file"] == thinktank["env_file"]
    env, server_env = _thinktank_environment("worker"), _thinktank_environment()
    for name in ("THINKTANK_DATABASE_URL", "THINKTANK_REDIS_URL"):
        assert env[name] == server_env[name], name
    assert worker["volumes"] == [v for v in thinktank["volumes"] if str(v).startswith("thinktank-data:")]
    assert worker["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                    "redis": {"condition": "service_healthy"}}
    assert worker["restart"] == thinktank["restart"]
    assert "ports" not in worker  # it serves no API


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_the_workers_health_check_asks_its_metrics_port() -> None:
    worker = _services()["worker"]
    check = worker["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    assert "/ready" not in check[3] and "8000" not in check[3]  # not the image's check of the API
    assert f"'127.0.0.1', {_metrics_port(worker['command'])}," in check[3]
    # Docker's SIGKILL comes after the queue's own allowance for the jobs under way.
    grace = inspect.signature(PgQueue.__init__).parameters["grace"].default
    assert _seconds(worker["stop_grace_period"]) > grace + 5


def test_a_started_worker_passes_its_health_check_and_a_stopped_one_fails_it(
    tmp_path: Path, redis_url: str, pg_template: str,
) -> None:
    """`thinktank worker` started as the service starts it: deploy/.env filled in, the service's environment, a
    real PostgreSQL and Redis; the health check, run as Docker runs it, passes within what Docker grants before
    it calls the container unhealthy, and fails once the worker is stopped."""
    worker = _services()["worker"]
    health = worker["healthcheck"]
    port, free = _metrics_port(worker["command"]), free_port()
    check = on_port(health["test"][1:], port, free)
    dotenv = {name: f"made-up-{name.lower().replace('_', '-')}" for name in env_example(commented=False)}
    name, database_url = asyncio.run(clone_pg(pg_template))
    env = {**clean_env(tmp_path), **dotenv, **_environment("worker", dotenv),
           "THINKTANK_DATABASE_URL": database_url, "THINKTANK_REDIS_URL": redis_url}
    log = tmp_path / "worker.log"
    proc = start(on_port(worker["command"], port, free), env, log)
    try:
        allowance = _seconds(health["start_period"]) + _seconds(health["interval"]) * health["retries"]
        until_passes(check, proc, log, timeout=_seconds(health["timeout"]), allowance=allowance)
        err = stop(proc, log, _seconds(worker["stop_grace_period"]))
        assert "thinktank worker: running jobs from the postgres queue, 8 at once" in err
        assert not passes(check, _seconds(health["timeout"]))
    finally:
        proc.kill()
        proc.wait()
        asyncio.run(drop_pg(name))
