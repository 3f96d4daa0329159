"""Reading a built-in tool's arguments: each one with its type and range checked, anything wrong a
:class:`~.tools.ToolError` the model reads (never a crash), although the loop checks them against the tool's
schema first."""

from __future__ import annotations

from typing import Any

from .tools import ToolError, ToolSpec

__all__ = ["Args", "cut_text", "object_schema"]


def object_schema(schema: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": schema, "required": required, "additionalProperties": False}


class Args:
    """A call's arguments, read one by one with their types checked (ToolError for anything wrong)."""

    def __init__(self, arguments: Any, spec: ToolSpec) -> None:
        if not isinstance(arguments, dict):
            raise ToolError(f"{spec.name}: the arguments must be a JSON object")
        known = set(spec.parameters["properties"])
        unknown = sorted(str(k) for k in arguments if k not in known)
        if unknown:
            raise ToolError(f"{spec.name}: unknown argument(s) {', '.join(unknown)}; it takes "
                            f"{', '.join(sorted(known)) or 'none'}")
        self.values: dict[str, Any] = arguments
        self.tool = spec.name

    def text(self, name: str, *, max_chars: int, required: bool = False) -> str | None:
        value = self.values.get(name)
        if value is None:
            if required:
                raise ToolError(f"{self.tool}: '{name}' is required")
            return None
        if not isinstance(value, str):
            raise ToolError(f"{self.tool}: '{name}' must be a string")
        value = value.strip()
        if required and not value:
            raise ToolError(f"{self.tool}: '{name}' must not be empty")
        if len(value) > max_chars:
            raise ToolError(f"{self.tool}: '{name}' has at most {max_chars} characters")
        return value or None

    def required_text(self, name: str, *, max_chars: int) -> str:
        value = self.text(name, max_chars=max_chars, required=True)
        assert value is not None
        return value

    def integer(self, name: str, *, low: int, high: int, default: int) -> int:
        value = self.values.get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ToolError(f"{self.tool}: '{name}' must be an integer")
        if not low <= value <= high:
            raise ToolError(f"{self.tool}: '{name}' must be between {low} and {high}")
        return value

    def texts(self, name: str, *, max_items: int, max_chars: int) -> list[str] | None:
        value = self.values.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ToolError(f"{self.tool}: '{name}' must be a list of names")
        if len(value) > max_items or any(len(v) > max_chars for v in value):
            raise ToolError(f"{self.tool}: '{name}' has at most {max_items} names of at most {max_chars} characters")
        return list(dict.fromkeys(v.strip() for v in value)) or None


def cut_text(text: str, chars: int) -> tuple[str, bool]:
    """``text`` cut to at most ``chars`` characters (at a space when there is one nearby); whether it was cut."""
    if len(text) <= chars:
        return text, False
    head = text[:chars]
    space = head.rfind(" ")
    if space > chars * 3 // 4:
        head = head[:space]
    return head.rstrip(), True


# -- the tools -----------------------------------------------------------------------------------
