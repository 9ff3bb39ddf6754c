"""What a Kubernetes API server enforces on an object beyond JSON Schema, checked offline.

JSON Schema validation (jsonschema, kubernetes-validate) passes two kinds of objects that a real
API server rejects:

- **list types.** A list marked `x-kubernetes-list-type: map` may hold one item per value of its
  `x-kubernetes-list-map-keys` (a Pod's `volumeMounts` are keyed by `mountPath`, but the
  volumeMounts of a Trainer v2 runtime patch by `name`); a `set` holds each value once. The
  server answers `Duplicate value: {"name":"vol-checkpoints"}`.
- **CEL rules** (`x-kubernetes-validations`) of a CRD: each rule is evaluated with `self` bound to
  the value at its node, after the server has filled in the schema's defaults. Rules that read
  `oldSelf` (transition rules: "field is immutable") run only on an update, against the stored
  object: `check(obj, schema, old=previous)` evaluates them, `check(obj, schema)` is a create.

`check` walks an object and its schema together. A schema is a CRD's openAPIV3Schema, or an
OpenAPI / JSON Schema document whose `$ref`s resolve in `definitions` (the Kubernetes schemas of
kubernetes-validate, Katib's OpenAPI spec). CEL is evaluated by cel-python (RE2 regular
expressions, as the API server); a rule that cannot be compiled or evaluated is a failure, never a
pass.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from typing import Any

Path = tuple[str | int, ...]


def check(obj: Any, schema: dict[str, Any], definitions: dict[str, Any] | None = None, old: Any = None) -> list[str]:
    """Problems of `obj` (after defaulting) as the API server words them, one line each."""
    obj = copy.deepcopy(obj)
    walker = _Walker(definitions or {})
    walker.default(obj, schema)
    return list(walker.walk(obj, schema, old, ()))


def where(path: Path) -> str:
    """`spec.replicas[0].name`, the API server's way of naming a field."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "<root>"


class _Walker:
    def __init__(self, definitions: dict[str, Any]):
        self.definitions = definitions

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The schema with `$ref` and single-branch `allOf` (OpenAPI's way of annotating a ref) merged in."""
        while "$ref" in schema:
            ref = schema["$ref"].rsplit("/", 1)[-1]
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**self.definitions[ref], **rest}
        for part in schema.get("allOf", []):
            schema = {**{k: v for k, v in schema.items() if k != "allOf"}, **self.resolve(part)}
        return schema

    def children(self, value: Any, schema: dict[str, Any]) -> Iterator[tuple[str | int, Any, dict[str, Any]]]:
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                sub = props.get(key, extra if isinstance(extra, dict) else None)
                if sub is not None:
                    yield key, item, self.resolve(sub)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            sub = self.resolve(schema["items"])
            for i, item in enumerate(value):
                yield i, item, sub

    def default(self, value: Any, schema: dict[str, Any]) -> None:
        """Fill in `default`s of absent properties, as the API server does before it validates."""
        schema = self.resolve(schema)
        if isinstance(value, dict):
            for key, sub in (schema.get("properties") or {}).items():
                sub = self.resolve(sub)
                if key not in value and "default" in sub and sub["default"] is not None:
                    value[key] = copy.deepcopy(sub["default"])
        for _, item, sub in self.children(value, schema):
            self.default(item, sub)

    def walk(self, value: Any, schema: dict[str, Any], old: Any, path: Path) -> Iterator[str]:
        schema = self.resolve(schema)
        if isinstance(value, list):
            yield from _list_type(value, schema, path)
        for rule in schema.get("x-kubernetes-validations") or []:
            problem = _evaluate(rule, value, old)
            if problem:
                yield f"{where(path)}: Invalid value: {problem}"
        olds = _correlate(value, old, schema)
        for key, item, sub in self.children(value, schema):
            yield from self.walk(item, sub, olds.get(key), (*path, key))


def _list_type(items: list[Any], schema: dict[str, Any], path: Path) -> Iterator[str]:
    kind = schema.get("x-kubernetes-list-type")
    if kind not in ("map", "set"):
        return
    keys = schema.get("x-kubernetes-list-map-keys") or []
    seen: set[str] = set()
    for i, item in enumerate(items):
        identity = {k: item.get(k) for k in keys} if kind == "map" and isinstance(item, dict) else item
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        if text in seen:
            yield f"{where((*path, i))}: Duplicate value: {text}"
        seen.add(text)


def _correlate(value: Any, old: Any, schema: dict[str, Any]) -> dict[str | int, Any]:
    """The old value of each child: objects by key; list-map items by their keys (other lists'
    items cannot be matched to old ones, so their transition rules do not run, as on the server)."""
    if old is None:
        return {}
    if isinstance(value, dict) and isinstance(old, dict):
        return dict(old)
    if isinstance(value, list) and isinstance(old, list) and schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []

        def ident(item: Any) -> str:
            return json.dumps({k: item.get(k) for k in keys} if isinstance(item, dict) else item, sort_keys=True)

        by_key = {ident(o): o for o in old}
        return {i: by_key.get(ident(v)) for i, v in enumerate(value)}
    return {}


def _evaluate(rule: dict[str, Any], value: Any, old: Any) -> str | None:
    """None when the rule holds (or is a transition rule on a create); else the rule's message."""
    import celpy

    text = rule["rule"]
    transition = "oldSelf" in text
    if transition and old is None:
        return None
    activation = {"self": celpy.json_to_cel(value)}
    if transition:
        activation["oldSelf"] = celpy.json_to_cel(old)
    try:
        result = _program(text).evaluate(activation)
    except Exception as e:  # noqa: BLE001 - any failure to evaluate rejects the object, as on the server
        return f"rule {text!r} could not be evaluated: {e}"
    if isinstance(result, celpy.CELEvalError):
        return f"rule {text!r} could not be evaluated: {result}"
    if result is True or (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
        return None
    message = rule.get("message") or f"failed rule: {text}"
    return f"{json.dumps(value)[:200]}: {message}"


@functools.cache
def _program(text: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(text))
