"""Everything a running app holds, built by the app factory and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..auth import AdminKey
from ..clock import Clock, SystemClock
from ..config import Settings
from ..gateway.router import Router
from ..providers._http import HttpClient

__all__ = ["AppState"]


@dataclass
class AppState:
    settings: Settings
    router: Router
    admin_key: AdminKey
    http: HttpClient
    clock: Clock = field(default_factory=SystemClock)
    started_at: float = 0.0
    ready: bool = False
