"""``thinktank usage``: requests, tokens and spend from the server (``GET /api/v1/usage``)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from .client import DEFAULT_URL, ConfigOpt, DemoOpt, KeyOpt, LocalOpt, Target, UrlOpt, connect
from .common import fail, print_json, print_table

__all__ = ["usage_command"]

_GROUPS = ("model", "key", "user", "deployment", "day")


def usage_command(
    by: Annotated[str, typer.Option("--by", help="model, key, user, deployment or day.")] = "model",
    days: Annotated[float, typer.Option(help="How many days back.", min=0)] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON.")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Requests, tokens and spend over a time range, as a table (everyone's with an admin key, else yours)."""
    if by not in _GROUPS:
        fail("--by takes model, key, user, deployment or day")
    params = {"group_by": by, "start": time.time() - days * 86400, "sort": "group" if by == "day" else "cost"}
    with connect(Target(url, api_key, local, config, demo)) as client:
        report = client.call("GET", "/api/v1/usage", params=params)
    if as_json:
        print_json(report)
        return
    print_table([by, "requests", "prompt tokens", "completion tokens", "cost usd", "errors"],
                [[r["group"], r["requests"], r["prompt_tokens"], r["completion_tokens"], f"{r['cost_usd']:.6f}",
                  r["errors"]] for r in report["data"]])
