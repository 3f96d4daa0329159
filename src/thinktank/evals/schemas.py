"""JSON schemas given by users, checked when the check is parsed and applied with guards.

At parse (:func:`check_schema`): at most :data:`MAX_SCHEMA_BYTES` of JSON nested at most
:data:`MAX_SCHEMA_DEPTH` deep, a known ``$schema`` draft, valid against its meta-schema, references only
inside the schema (``#...``; nothing is ever fetched) and local JSON pointers that resolve, and every
``pattern`` / ``patternProperties`` regular expression acceptable to :mod:`.patterns`.

When applied (:func:`schema_errors`): ``pattern``, ``patternProperties`` and ``additionalProperties`` (which
reads the ``patternProperties``) match with the ``regex`` engine under one shared deadline, so a
catastrophic pattern cannot hang the validation; ``unevaluatedProperties`` next to ``patternProperties`` (which
``jsonschema`` would match with ``re``, without a timeout) is refused at parse.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

import orjson

from .patterns import Deadline, compile_pattern, search

__all__ = ["MAX_SCHEMA_BYTES", "MAX_SCHEMA_DEPTH", "check_schema", "schema_errors"]

MAX_SCHEMA_BYTES: Final = 64 * 1024
MAX_SCHEMA_DEPTH: Final = 64
_DATA_KEYWORDS: Final = frozenset({"enum", "const", "default", "examples"})
"""Keywords whose values are instances, not schemas: nothing in them is a pattern or a reference."""
_REF_KEYWORDS: Final = frozenset({"$ref", "$dynamicRef", "$recursiveRef"})


class _Shape:
    def __init__(self) -> None:
        self.ids = False
        self.pattern_properties = False
        self.unevaluated = False
        self.pointers: list[str] = []


def _walk(node: Any, shape: _Shape, depth: int, root: bool) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise ValueError(f"the JSON schema nests more than {MAX_SCHEMA_DEPTH} deep")
    if isinstance(node, list):
        for value in node:
            _walk(value, shape, depth + 1, False)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _DATA_KEYWORDS:
            continue
        if key == "$id" and not root:
            shape.ids = True
        elif key == "pattern" and isinstance(value, str):
            _pattern(value)
        elif key == "patternProperties" and isinstance(value, dict):
            shape.pattern_properties = True
            for pattern in value:
                _pattern(pattern)
        elif key == "unevaluatedProperties":
            shape.unevaluated = True
        elif key in _REF_KEYWORDS and isinstance(value, str):
            if not value.startswith("#"):
                raise ValueError(f"the JSON schema refers outside itself ({key} {value!r}): only references "
                                 "inside the schema ('#/$defs/...') are followed")
            if value.startswith("#/"):
                shape.pointers.append(value)
        _walk(value, shape, depth + 1, False)


def _pattern(pattern: str) -> None:
    try:
        compile_pattern(pattern)
    except ValueError as exc:
        raise ValueError(f"the JSON schema's pattern {pattern[:80]!r}: {exc}") from None


def _resolve(root: Any, pointer: str) -> bool:
    """Whether the JSON pointer ``#/a/b`` names something in ``root``."""
    node = root
    for raw in pointer[2:].split("/"):
        part = raw.replace("%25", "%").replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError (saying what to fix) unless ``schema`` is a JSON schema an evaluation may apply."""
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    try:
        size = len(orjson.dumps(schema))
    except (TypeError, orjson.JSONEncodeError):
        raise ValueError("the JSON schema is not JSON") from None
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"the JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KB")
    shape = _Shape()
    _walk(schema, shape, 1, True)
    if shape.pattern_properties and shape.unevaluated:
        raise ValueError("the JSON schema combines patternProperties with unevaluatedProperties, which an "
                         "evaluation cannot apply safely; use additionalProperties")
    if not shape.ids:  # an embedded $id moves the base of the pointers below it: the engine resolves those
        missing = [p for p in shape.pointers if not _resolve(schema, p)]
        if missing:
            raise ValueError(f"the JSON schema refers to {missing[0]!r}, which it does not contain")
    if "$schema" in schema and validators.validator_for(schema, default=_Unknown) is _Unknown:  # type: ignore[arg-type, comparison-overlap]
        raise ValueError(f"unknown JSON schema draft {schema['$schema']!r} (omit $schema for the latest)")
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise ValueError(f"invalid JSON schema{f' at {where}' if where else ''}: {exc.message}") from None
    except RecursionError:
        raise ValueError("the JSON schema nests too deep") from None


class _Unknown:
    """Marks a ``$schema`` that names no draft jsonschema knows."""


def _guarded(base: Any, deadline: Deadline) -> Any:
    """``base`` (a jsonschema validator class) with its regular-expression keywords on the ``regex`` engine."""
    from jsonschema import validators
    from jsonschema.exceptions import ValidationError

    original_additional = base.VALIDATORS.get("additionalProperties")

    def pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
        if validator.is_type(instance, "string") and search(patrn, instance, deadline) is None:
            yield ValidationError(f"{instance[:80]!r} does not match {patrn[:80]!r}")

    def pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                           schema: Any) -> Iterator[ValidationError]:
        if not validator.is_type(instance, "object"):
            return
        for patrn, subschema in patterns.items():
            for key, value in instance.items():
                if search(patrn, key, deadline) is not None:
                    yield from validator.descend(value, subschema, path=key, schema_path=patrn)

    def additional_properties(validator: Any, additional: Any, instance: Any,
                              schema: Any) -> Iterator[ValidationError]:
        if "patternProperties" not in schema:
            if original_additional is not None:
                yield from original_additional(validator, additional, instance, schema)
            return
        if not validator.is_type(instance, "object"):
            return
        named = schema.get("properties", {})
        patterns = list(schema["patternProperties"])
        extras = sorted(key for key in instance
                        if key not in named and not any(search(p, key, deadline) is not None for p in patterns))
        if validator.is_type(additional, "object"):
            for key in extras:
                yield from validator.descend(instance[key], additional, path=key)
        elif additional is False and extras:
            listed = ", ".join(repr(key[:80]) for key in extras[:5])
            yield ValidationError(f"{listed} match{'es' if len(extras) == 1 else ''} no property pattern")

    return validators.extend(base, {"pattern": pattern, "patternProperties": pattern_properties,  # type: ignore[no-untyped-call]
                                    "additionalProperties": additional_properties})


def schema_errors(schema: dict[str, Any], instance: Any, deadline: Deadline) -> str | None:
    """Why ``instance`` is not valid against ``schema`` (checked by :func:`check_schema`), or None if it is.

    Raises :class:`~.patterns.PatternTimeout` past ``deadline``; formats are not asserted."""
    from jsonschema import validators
    from jsonschema.exceptions import best_match

    validator = _guarded(validators.validator_for(schema), deadline)(schema)
    error = best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{f'at {where}: ' if where else ''}{error.message}"
