"""Access to the JSON Schemas in `schemas/`: the one contract for shapes that cross a boundary.

In a wheel the files ship as `airgap_orch/_schemas/`; in a source checkout they are read from
`schemas/` at the repository root. Validators are compiled once per schema.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema

from .errors import InvalidInput


def schema_dir() -> Path:
    packaged = resources.files("airgap_orch") / "_schemas"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "schemas"


@functools.cache
def load(name: str) -> dict[str, Any]:
    """Load `schemas/<name>.schema.json`."""
    return json.loads((schema_dir() / f"{name}.schema.json").read_text(encoding="utf-8"))


def _resolve_sibling(uri: str) -> dict[str, Any]:
    return load(uri.rsplit("/", 1)[-1].removesuffix(".schema.json"))


@functools.cache
def validator(name: str):
    # compile() rewrites $refs in place: give it a copy so load() stays the file's text (the OpenAPI doc uses it)
    return fastjsonschema.compile(
        copy.deepcopy(load(name)), handlers={"https": _resolve_sibling, "http": _resolve_sibling}, use_default=False
    )


def validate(name: str, document: Any, what: str) -> None:
    """Raise InvalidInput with a one-line message when `document` does not match schema `name`."""
    message = problem(name, document, what)
    if message is not None:
        raise InvalidInput(message)


def problem(name: str, document: Any, what: str) -> str | None:
    """The one-line message saying how `document` fails schema `name` (naming it `what`), or None."""
    try:
        validator(name)(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        where = exc.name.replace("data", what, 1) if exc.name else what
        return f"{where} {_explain(exc, name)}"
    return None


def _explain(exc: fastjsonschema.JsonSchemaValueException, name: str) -> str:
    """What is wrong, in words (fastjsonschema's own message shows Python reprs for field lists). A pattern
    property may say what it expects in `x-expected` (an annotation JSON Schema validators ignore)."""
    if exc.rule == "required" and isinstance(exc.value, dict):
        missing = [field for field in exc.rule_definition if field not in exc.value]
        return f"is missing {', '.join(missing)}; add {'it' if len(missing) == 1 else 'them'}"
    if exc.rule == "additionalProperties" and isinstance(exc.value, dict):
        extra = sorted(set(exc.value) - set(exc.definition.get("properties", {})))
        named = ", ".join(shown(field, 40) for field in extra[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        listed = exc.definition.get("$id", name).rsplit("/", 1)[-1].removesuffix(".schema.json")  # a $ref'd schema
        return f"has unknown fields {named}{more}; remove them (schemas/{listed}.schema.json lists the fields)"
    if exc.rule == "pattern" and "x-expected" in exc.definition:
        return f"must be {exc.definition['x-expected']}, not {shown(exc.value, 80)}"
    return "must " + exc.message.split(" must ", 1)[-1]


def shown(value: Any, limit: int) -> str:
    """A value as it may appear in a one-line error: repr (no raw newlines or escapes), cut to `limit`."""
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit - 3]) + "..."
