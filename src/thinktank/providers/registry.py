"""Provider registry: entry points in group ``thinktank.providers``.

The built-in providers are declared in thinktank's own ``pyproject.toml`` under that group, so a
third-party package registers a provider exactly the way the built-ins do::

    [project.entry-points."thinktank.providers"]
    myvendor = "my_package.provider:MyVendorProvider"
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from ..errors import ConfigError
from .base import ProviderFactory

__all__ = ["GROUP", "ProviderRegistry"]

GROUP = "thinktank.providers"


class ProviderRegistry:
    """Maps provider names to factories; entry points are read once, on first use."""

    def __init__(self, extra: dict[str, ProviderFactory] | None = None) -> None:
        self._extra = dict(extra or {})
        self._eps: dict[str, EntryPoint] | None = None
        self._loaded: dict[str, ProviderFactory] = {}

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self._eps is None:
            self._eps = {ep.name: ep for ep in entry_points(group=GROUP)}
        return self._eps

    def register(self, name: str, factory: ProviderFactory) -> None:
        self._extra[name] = factory

    def names(self) -> list[str]:
        return sorted(set(self._entry_points()) | set(self._extra))

    def get(self, name: str) -> ProviderFactory:
        if name in self._extra:
            return self._extra[name]
        if name in self._loaded:
            return self._loaded[name]
        ep = self._entry_points().get(name)
        if ep is None:
            known = ", ".join(self.names()) or "none (is thinktank installed? run: pip install -e .)"
            raise ConfigError(f"unknown provider '{name}' (known: {known})")
        factory: ProviderFactory = ep.load()
        self._loaded[name] = factory
        return factory
