"""docs/deploy.md names real things: settings thinktank reads, files that exist."""

from __future__ import annotations

import re

from .artefacts import ROOT, thinktank_names, unknown_settings

DOC = ROOT / "docs" / "deploy.md"


def test_the_settings_it_names_are_real() -> None:
    names = thinktank_names(DOC.read_text())
    assert len(names) > 10
    assert unknown_settings(names) == set()


def test_the_files_it_names_exist() -> None:
    paths = set(re.findall(r"`((?:deploy/|\.dockerignore|hatch_build\.py)[^`\s]*)`", DOC.read_text()))
    assert "deploy/Dockerfile" in paths
    missing = {p for p in paths if not (ROOT / p.rstrip("/")).exists()}
    # deploy/.env is the operator's own (from env.example); the alerting rules come with the metrics work
    # (issue 16).
    assert missing <= {"deploy/.env", "deploy/prometheus/alerts.yaml"}
