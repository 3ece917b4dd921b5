"""Access to the JSON Schemas in `schemas/`: the one contract for shapes that cross a boundary.

In a wheel the files ship as `airgap_orch/_schemas/`; in a source checkout they are read from
`schemas/` at the repository root. Validators are compiled once per schema.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema

from . import clock
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


def at(name: str, pointer: str) -> Any:
    """The value at JSON Pointer `pointer` in schema `name`, e.g. at("claim-request", "/properties/limit/maximum"):
    how code reads a limit the contract states, instead of stating it a second time."""
    node: Any = load(name)
    for part in pointer.removeprefix("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def definition(name: str) -> dict[str, Any]:
    """A shared definition of schemas/common.schema.json (a name, a flow key, a timestamp, a reason ...)."""
    return at("common", f"/definitions/{name}")


def _iso_time(text: str) -> bool:
    """format date-time: RFC 3339, and the other ISO 8601 forms clock.parse_iso reads (e.g. no seconds, no
    offset: UTC), inside the range a timestamp holds."""
    try:
        clock.parse_iso(text)
    except ValueError:
        return False
    return True


def _iso_date(text: str) -> bool:
    """format date: an RFC 3339 full-date (YYYY-MM-DD) that exists."""
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


# How these formats read: a request time is what the operations read (validation.timestamp), no more and no less.
FORMATS = {"date-time": _iso_time, "date": _iso_date}


@functools.cache
def validator(name: str):
    # compile() rewrites $refs in place: give it a copy so load() stays the file's text (the OpenAPI doc uses it)
    return fastjsonschema.compile(
        copy.deepcopy(load(name)), handlers={"https": _resolve_sibling, "http": _resolve_sibling}, use_default=False,
        formats=FORMATS,
    )


def validate(name: str, document: Any, what: str) -> None:
    """Raise InvalidInput with a one-line message when `document` does not match schema `name`; the error
    carries where as data (OrchError.index and .field)."""
    refused = refusal(name, document, what)
    if refused is not None:
        raise refused


def problem(name: str, document: Any, what: str) -> str | None:
    """The one-line message saying how `document` fails schema `name` (naming it `what`), or None."""
    refused = refusal(name, document, what)
    return None if refused is None else str(refused)


def refusal(name: str, document: Any, what: str) -> InvalidInput | None:
    """How `document` fails schema `name`, as an InvalidInput, or None.

    Its message names the failing value `what`.field, or, inside the items of a batch array (a top-level
    property that says what one item is in `x-item`, e.g. "job"), `job 3`.field; `index` (from 0) and `field`
    carry the same as data, `field` naming the missing or unknown field where that is what is wrong."""
    try:
        validator(name)(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        return _refusal(exc, name, what)
    return None


_ITEM = re.compile(r"^data\.([A-Za-z_][A-Za-z0-9_]*)\[([0-9]+)\]")


def _refusal(exc: fastjsonschema.JsonSchemaValueException, name: str, what: str) -> InvalidInput:
    path = exc.name or "data"
    index = None
    item = _ITEM.match(path)
    kind = load(name).get("properties", {}).get(item.group(1), {}).get("x-item") if item else None
    if item is not None and kind is not None:
        index = int(item.group(2))
        inner = path[item.end():]
        where = f"{kind} {index + 1}{inner}"
    else:
        inner = path.removeprefix("data")
        where = f"{what}{inner}"
    field = inner.removeprefix(".")
    named = _named_field(exc)
    if named is not None:
        field = f"{field}.{named}" if field else named
    return InvalidInput(f"{where} {_explain(exc, name)}", index=index, field=field or None)


def _named_field(exc: fastjsonschema.JsonSchemaValueException) -> str | None:
    """The field an object's error is about: the first one missing, or the first one unknown."""
    if exc.rule == "required" and isinstance(exc.value, dict):
        return next((field for field in exc.rule_definition if field not in exc.value), None)
    if exc.rule == "additionalProperties" and isinstance(exc.value, dict):
        return min(set(exc.value) - set(exc.definition.get("properties", {})), default=None)
    return None


def _explain(exc: fastjsonschema.JsonSchemaValueException, name: str) -> str:
    """What is wrong, in words (fastjsonschema's own message shows Python reprs for field lists). A property may
    say what it expects in `x-expected` (an annotation JSON Schema validators ignore): for a pattern or a time,
    or for a choice between fields (oneOf, minProperties)."""
    if exc.rule == "required" and isinstance(exc.value, dict):
        missing = [field for field in exc.rule_definition if field not in exc.value]
        return f"is missing {', '.join(missing)}; add {'it' if len(missing) == 1 else 'them'}"
    if exc.rule == "additionalProperties" and isinstance(exc.value, dict):
        extra = sorted(set(exc.value) - set(exc.definition.get("properties", {})))
        named = ", ".join(shown(field, 40) for field in extra[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        listed = exc.definition.get("$id", name).rsplit("/", 1)[-1].removesuffix(".schema.json")  # a $ref'd schema
        return f"has unknown fields {named}{more}; remove them (schemas/{listed}.schema.json lists the fields)"
    if "x-expected" in exc.definition:
        expected = exc.definition["x-expected"]
        if exc.rule in ("format", "anyOf", "not"):  # a time: a choice of formats, and the days it must not fall on
            return f"{shown(exc.value, 80)} is not {expected}"
        if exc.rule == "pattern":
            return f"must be {expected}, not {shown(exc.value, 80)}"
        if exc.rule in ("oneOf", "minProperties"):
            return f"must give {expected}"
    return "must " + exc.message.split(" must ", 1)[-1]


def shown(value: Any, limit: int) -> str:
    """A value as it may appear in a one-line error: repr (no raw newlines or escapes), cut to `limit`."""
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit - 3]) + "..."
