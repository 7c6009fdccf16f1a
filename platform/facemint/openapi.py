"""The OpenAPI document as a contract: every operation lists every status it can answer, and every error with the
one problem+json schema, so a generated client and a contract fuzzer (schemathesis, run in CI) agree with the
server.

The error statuses are derived from what each route is made of, the same way the server answers them:
- any route: 413 (every body is limited, `BodyLimitMiddleware`); 422 when it takes parameters or a body;
- a route with a database session: 503 (Postgres unavailable: nothing applied);
- a route behind `authenticate`: 401 (no or bad credentials), 403 (a missing scope, a frozen user, a suspended
  tenant, a role that may not), 404 (another tenant's objects are not found), 429 (rate limits), 503 (Postgres or
  Redis unavailable: nothing applied);
- an authenticated write: 409 (the object in another state, a name already taken);
- an Idempotency-Key route (a money-moving write): 400 (the header missing or malformed), 402 (not enough tokens
  where they come from), 409 (the key reused for another request);
- a route with a request body: 400 (a body that cannot be parsed) and 415 (a content type it does not take).
Statuses a route declares itself (402, 409, 410, ...) keep their descriptions and get the problem schema."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from facemint.deps import IDEMPOTENCY_KEY_HEADER
from facemint.problems import PROBLEM_CONTENT_TYPE

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `code` is stable, other members depend on the problem.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
    },
    "additionalProperties": True,
}

DEFAULT_DESCRIPTIONS = {
    400: "the request cannot be read (a malformed body or header)",
    401: "missing or invalid credentials",
    403: "the credentials may not do this (scope, role, frozen user, suspended tenant)",
    404: "not found (or another tenant's)",
    409: "conflict (an Idempotency-Key reused for another request, or the object's state)",
    413: "the request body is larger than this route takes",
    415: "unsupported content type",
    422: "invalid parameters or body",
    429: "too many requests (rate limits and concurrency caps); see Retry-After",
    503: "a dependency (Postgres, Redis) is unavailable: nothing was applied; retry with the same Idempotency-Key",
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def api_routes(app: FastAPI) -> Iterator[Any]:
    """Every API route of the app as mounted (prefixes applied): `path_format`, `methods`, `dependant`, ...
    The admin console's pages are not API routes (`facemint.console`; its own matrix covers them)."""
    from facemint.console.web import is_console_path

    for context in routing.iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and not is_console_path(context.path_format or ""):
            yield context


def console_routes(app: FastAPI) -> Iterator[Any]:
    """Every route of the admin console (pages, fragments and form posts under /admin, not /admin/v1)."""
    from facemint.console.web import is_console_path

    for context in routing.iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and is_console_path(context.path_format or ""):
            yield context


def takes_idempotency_key(route: Any) -> bool:
    from facemint.deps import idempotency_key_header

    return idempotency_key_header in set(_calls(route.dependant))


def error_statuses(route: Any) -> set[int]:
    """The error statuses this route can answer, from what it is made of (see the module's docstring)."""
    from fastapi.dependencies.utils import get_flat_params

    from facemint.deps import authenticate, get_session, idempotency_key_header

    calls = set(_calls(route.dependant))
    statuses = {413}
    body = route.body_field is not None or "requestBody" in (route.openapi_extra or {})
    if body or get_flat_params(route.dependant):
        statuses.add(422)
    if get_session in calls:
        statuses.add(503)
    if authenticate in calls:
        statuses |= {401, 403, 404, 429, 503}
        if route.methods & {"POST", "PUT", "PATCH", "DELETE"}:
            statuses.add(409)  # a write can meet its object in another state, or a name or key already taken
    if idempotency_key_header in calls:
        statuses |= {400, 402, 409}  # a money-moving write: the key, and tokens the source may not have
    if body:
        statuses |= {400, 415}
    return statuses


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_REF}}}


def build_schema(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    for route in api_routes(app):
        if not route.include_in_schema:
            continue
        statuses = error_statuses(route)
        for method in route.methods:
            operation = schema["paths"][route.path_format][method.lower()]
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "header" and parameter["name"] == IDEMPOTENCY_KEY_HEADER:
                    # Optional to FastAPI (so a missing one is our own 400), required to every client.
                    parameter["required"] = True
                    parameter["schema"] = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"}
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if takes_idempotency_key(route) and "200" not in responses:
                created = responses.get("201") or responses.get("202") or {}
                # A replay of the same Idempotency-Key answers the first result again, with 200.
                responses["200"] = {**created, "description": "a replay of this Idempotency-Key: the first result"}
            for code in statuses:
                responses.setdefault(str(code), {})
            for key, response in responses.items():
                if not key.isdigit() or int(key) < 400:
                    continue
                description = response.get("description") or DEFAULT_DESCRIPTIONS.get(int(key), "an error")
                if description in ("Validation Error", "Successful Response"):
                    description = DEFAULT_DESCRIPTIONS.get(int(key), description)
                responses[key] = _problem_response(description)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
