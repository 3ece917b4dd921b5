"""One operation, one place: every route of api.py has exactly one operation registered under its name (by the
operation module itself, operations/registry.py), every registered operation has a route, and every route names a
scope the scope table documents."""

from __future__ import annotations

import ast
from pathlib import Path

from airgap_orch import api
from airgap_orch.auth.scopes import OPERATION_SCOPES, SCOPES
from airgap_orch.operations import dispatch, registry

OPERATIONS_DIR = Path(__file__).resolve().parent.parent / "airgap_orch" / "operations"


def _registered_in_source() -> list[str]:
    """Every name given to @operation(...) / @prepared(...) in the operation modules' source, with repeats."""
    names = []
    for path in sorted(OPERATIONS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("operation", "prepared") and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                names.append(node.args[0].value)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "prepared"
                    and node.args and isinstance(node.args[0], ast.JoinedStr)):
                names.append("<f-string>")  # jobs.py registers the four reports in a loop
    return names


def test_every_route_has_exactly_one_registered_operation_and_every_operation_a_route():
    routes = [route.name for route in api.ROUTES]
    assert len(routes) == len(set(routes)), "two routes share a name"
    assert set(dispatch.OPERATIONS) == set(routes)
    assert dispatch.OPERATIONS is registry.OPERATIONS
    # Each name registered once in the source (a second registration would raise at import, this names it).
    literal = [name for name in _registered_in_source() if name != "<f-string>"]
    assert len(literal) == len(set(literal)), sorted(name for name in literal if literal.count(name) > 1)


def test_prepared_operations_are_registered_operations_on_mutating_routes():
    assert set(dispatch.PREPARED) <= set(dispatch.OPERATIONS)
    for name in dispatch.PREPARED:
        assert api.BY_NAME[name].mutating, name


def test_registering_an_operation_name_twice_is_refused():
    name = "jobs.enqueue"
    before = registry.OPERATIONS[name]
    try:
        registry.operation(name)(lambda ledger, **params: {})
    except ValueError as error:
        assert name in str(error)
    else:
        raise AssertionError("a second registration of one name was accepted")
    assert registry.OPERATIONS[name] is before


def test_every_route_names_a_known_scope_and_the_scope_table_collects_it():
    for route in api.ROUTES:
        assert route.scope in SCOPES or (route.scope is None and route.name == "auth.whoami"), route.name
        assert OPERATION_SCOPES[route.name] == route.scope


def test_dispatch_names_no_operation_of_its_own():
    """dispatch.py builds its table from the registry: no operation name appears in its source."""
    source = (OPERATIONS_DIR / "dispatch.py").read_text(encoding="utf-8")
    strings = {node.value for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not strings & {route.name for route in api.ROUTES}


def test_the_openapi_document_names_each_operations_scope_as_its_security_role():
    from airgap_orch.server import openapi

    document = openapi.document()
    found = {operation["operationId"]: operation["security"]
             for methods in document["paths"].values() for operation in methods.values()}
    for route in api.ROUTES:
        roles = [route.scope] if route.scope is not None else []  # whoami: a valid token, no role
        assert found[route.name.replace(".", "_")] == [{"bearer": roles}], route.name
    assert found["metrics"] == [{"bearer": [OPERATION_SCOPES["metrics"]]}]
