"""The SDK against the API's own OpenAPI document, so that it can never fall behind the API unnoticed:

- every `/v1` and `/admin/v1` operation is called by some SDK method, and every route an SDK method declares
  (`@endpoint("GET /v1/jobs/{job_id}")`, `facemint_client._resource.operations`) exists;
- every method, called with sample arguments, sends what it declares: one of its routes with its own arguments in
  the path, only query parameters and body members that operation takes, in a content type it takes, and an
  Idempotency-Key exactly where the operation takes one;
- every response model an SDK method returns reads only members its routes' response schemas have (nested models
  included).

A new route fails the first test until an SDK method declares it; a new method needs nothing here but its
decorator's route (and, only if its arguments are unusual, a sample below)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qsl

import httpx
import pytest

from facemint.app import create_app
from facemint_client import Facemint
from facemint_client._core import Call
from facemint_client._resource import Listing, Operation, Paged, Route, operations
from facemint_client.admin_models import ExportInfo
from tests.conftest import make_settings
from tests.jobs.conftest import SOURCE

Spec = dict[str, Any]

# The API surface the SDK must cover (other routes, `/auth/...`, may be declared too, and must then exist).
COVERED_PREFIXES = ("/v1/", "/admin/v1/")
# Operations under those prefixes the SDK leaves out on purpose, as "METHOD /path": why. None today; the Zendesk
# webhook (`/integrations/zendesk/...`) is Zendesk's and outside the prefixes.
NOT_IN_SDK: dict[str, str] = {}
# Models an SDK method builds from something other than a JSON body.
NOT_FROM_A_BODY: frozenset[type] = frozenset({ExportInfo})  # the export's X-Export-* headers
# Model fields the SDK fills itself, as "Model.field": why.
CLIENT_SIDE_FIELDS = {
    "BatchResult.replayed": "from the Idempotent-Replayed header (False in a stored batch's result)",
}

# Sample arguments by parameter name, where the type alone does not make a usable one (OMIT: left out).
OMIT = object()
SAMPLES: dict[str, Callable[[Path], Any]] = {
    "path": lambda tmp: tmp / "download",  # a file the call writes
    "csv": lambda tmp: OMIT,  # `batch` takes items or csv: the items are checked against the schema
    "items": lambda tmp: [{"user_id": 1, "amount": 5, "reference": "r"}],
    "url": lambda tmp: "https://example.test/events",
    "content_type": lambda tmp: OMIT,  # an asset's type is recognised from its bytes
}


class Sent(Exception):
    """Raised by the transport with the request, so that nothing more is sent or parsed."""

    def __init__(self, request: httpx.Request) -> None:
        super().__init__(f"{request.method} {request.url}")
        self.request = request


def _capture(request: httpx.Request) -> httpx.Response:
    request.read()
    raise Sent(request)


CLIENT = Facemint(
    "fmk_contract", base_url="http://sdk.test", http_client=httpx.Client(transport=httpx.MockTransport(_capture))
)
OPERATIONS = dict(operations(CLIENT))


@pytest.fixture(scope="module")
def spec(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Spec:
    app = create_app(make_settings(database_url, redis_url, data_dir=tmp_path_factory.mktemp("data")))
    document: Spec = app.openapi()
    return document


def _api_operations(spec: Spec) -> set[str]:
    return {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item}


def _declared() -> dict[str, list[str]]:
    """Each declared route and the SDK methods that declare it."""
    found: dict[str, list[str]] = {}
    for name, operation in OPERATIONS.items():
        for route in operation.routes:
            found.setdefault(str(route), []).append(name)
    return found


# --- coverage, both ways -------------------------------------------------------------------------------------


def test_every_v1_and_admin_operation_is_called_by_an_sdk_method(spec: Spec) -> None:
    required = {op for op in _api_operations(spec) if op.split(" ", 1)[1].startswith(COVERED_PREFIXES)}
    assert len(required) > 90
    missing = sorted(required - set(_declared()) - set(NOT_IN_SDK))
    assert not missing, f"API operations no SDK method declares (add a method, or a reasoned NOT_IN_SDK): {missing}"


def test_every_route_an_sdk_method_declares_exists(spec: Spec) -> None:
    unknown = {route: names for route, names in _declared().items() if route not in _api_operations(spec)}
    assert not unknown, f"SDK methods declare routes the API does not have: {unknown}"


def test_exclusions_are_real_operations_the_sdk_does_not_call(spec: Spec) -> None:
    for operation, why in NOT_IN_SDK.items():
        assert operation in _api_operations(spec), f"a stale exclusion: {operation}"
        assert operation not in _declared(), f"excluded, yet declared: {operation}"
        assert why.strip()


# --- what each method sends ----------------------------------------------------------------------------------


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    return typing.get_type_hints(function)


def _sample(name: str, hint: Any, tmp: Path, serial: Iterator[int]) -> Any:
    """A value of `hint` for the parameter `name`: numbers and strings distinct per parameter, so that a path
    built from swapped arguments shows."""
    if name in SAMPLES:
        return SAMPLES[name](tmp)
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union or origin is types.UnionType:
        options = [arg for arg in args if arg is not type(None)]
        if bytes in options:  # a file: its bytes
            return SOURCE
        return _sample(name, options[0], tmp, serial)
    if origin is Literal:
        return args[0]
    if hint is bool:
        return True
    if hint is int:
        return next(serial)
    if hint is float:
        return float(next(serial)) + 0.5
    if hint is str:
        return f"{name}-{next(serial)}"
    if hint is datetime:
        return datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    if hint is date:
        return date(2026, 12, 1)
    if origin in (list, Sequence):
        return [_sample(name, args[0], tmp, serial)]
    if origin in (dict, Mapping):
        return {}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        fields = _hints(hint)
        return hint(**{f.name: _sample(f.name, fields[f.name], tmp, serial) for f in dataclasses.fields(hint)})
    raise TypeError(f"no sample for {name}: {hint!r}; add one to SAMPLES")


def _arguments(function: Callable[..., Any], tmp: Path) -> dict[str, Any]:
    """Every parameter of the method (optional ones too, so that every body member and filter is checked)."""
    hints = _hints(function)
    serial = iter(range(101, 10_000))
    values = {}
    for parameter in inspect.signature(function).parameters:
        if parameter == "self":
            continue
        value = _sample(parameter, hints[parameter], tmp, serial)
        if value is not OMIT:
            values[parameter] = value
    return values


def _send(name: str, tmp: Path) -> tuple[httpx.Request, dict[str, Any]]:
    """The first request the method sends, called with sample arguments."""
    operation = OPERATIONS[name]
    *path, attr = name.split(".")
    resource: Any = CLIENT
    for part in path:
        resource = getattr(resource, part)
    arguments = _arguments(operation.function, tmp)
    method = getattr(resource, attr)

    def call() -> object:
        result = method(**arguments)
        return result.first_page() if isinstance(operation, Paged) else result

    with pytest.raises(Sent) as sent:
        call()
    return sent.value.request, arguments


def _resolve(spec: Spec, schema: Spec) -> Spec:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _matching(operation: Operation[Any, Any] | Paged[Any, Any], request: httpx.Request) -> Route:
    matches = [route for route in operation.routes if route.matches(request.method, request.url.path)]
    assert matches, f"sent {request.method} {request.url.path}, declares {[str(r) for r in operation.routes]}"
    return matches[0]


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_each_method_sends_a_request_its_operation_takes(name: str, spec: Spec, tmp_path: Path) -> None:
    request, arguments = _send(name, tmp_path)
    route = _matching(OPERATIONS[name], request)
    operation = spec["paths"][route.path][route.method.lower()]
    # The path's parameters are the method's arguments of those names.
    names = re.findall(r"\{(\w+)\}", route.path)
    if set(names) <= set(arguments):
        assert request.url.path == route.path.format(**{n: arguments[n] for n in names})
    parameters = operation.get("parameters", [])
    query = {p["name"] for p in parameters if p["in"] == "query"}
    sent_query = {key for key, _ in parse_qsl(request.url.query.decode())}
    assert sent_query <= query, f"query parameters {sent_query - query} are not {route}'s"
    takes_key = any(p["in"] == "header" and p["name"].lower() == "idempotency-key" for p in parameters)
    assert ("idempotency-key" in request.headers) == takes_key, f"{route} takes an Idempotency-Key: {takes_key}"
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    body = operation.get("requestBody")
    if body is None:
        assert request.content in (b"", b"{}"), f"{route} takes no body"
        return
    assert content_type in body["content"], f"{route} takes {sorted(body['content'])}, not {content_type}"
    schemas = _objects(spec, body["content"][content_type]["schema"])
    properties = {name for schema in schemas for name in schema.get("properties", {})}
    if content_type == "application/json":
        members = set(json.loads(request.content))
    elif content_type == "multipart/form-data":
        members = set(re.findall(rb'name="([^"]+)"', request.content))
        members = {m.decode() for m in members}
    else:
        return  # raw bytes (a CSV, an image)
    unknown = members - properties
    assert not unknown, f"{route}'s body has no member {sorted(unknown)}"


# --- what each method reads ----------------------------------------------------------------------------------


def _value_type(hint: Any) -> Any:
    """What a method's answer is made of: X of `Call[X]`, `Flow[X]` or `Listing[X]` (pages of X)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Call or origin is Listing:
        return args[0]
    if origin is not None and getattr(origin, "__name__", "") == "Generator":
        return args[2]
    raise TypeError(f"not an operation's answer: {hint!r}")


def _models(hint: Any) -> list[type]:
    """The dataclasses a value of `hint` is built as, outermost only."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union or origin is types.UnionType:
        return [model for arg in args for model in _models(arg)]
    if origin is list:
        return _models(args[0])
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return [hint]
    return []


def _objects(spec: Spec, schema: Spec) -> list[Spec]:
    """The object schemas a value of `schema` may be: itself, each option, an array's items, and the items of a
    list envelope (`{"items": [...]}`: a page, or an unpaged list the SDK unwraps)."""
    schema = _resolve(spec, schema)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return [found for option in options for found in _objects(spec, option)]
    if schema.get("type") == "array":
        return _objects(spec, schema["items"])
    if "properties" not in schema:
        return []
    items = schema["properties"].get("items", {})
    return [schema, *(_objects(spec, items) if items.get("type") == "array" else [])]


def _unread(spec: Spec, model: type, schema: Spec, where: str) -> list[str]:
    """The fields of `model` (and of the models nested in it) that `schema` does not have."""
    properties = schema.get("properties", {})
    problems = [
        f"{where}.{f.name}"
        for f in dataclasses.fields(model)
        if f.name not in properties and f"{model.__name__}.{f.name}" not in CLIENT_SIDE_FIELDS
    ]
    hints = _hints(model)
    for field in dataclasses.fields(model):
        if field.name not in properties:
            continue
        for nested in _models(_inner(hints[field.name])):
            candidates = _objects(spec, properties[field.name])
            best = min((_unread(spec, nested, c, f"{where}.{field.name}") for c in candidates), key=len, default=None)
            problems += best if best is not None else [f"{where}.{field.name} (no object schema)"]
    return problems


def _inner(hint: Any) -> Any:
    """`X | None` -> X, `dict[str, X]` -> X (a field's model, if any)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is dict:
        return args[1]
    return hint


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_response_models_read_only_what_the_schemas_have(name: str, spec: Spec) -> None:
    operation = OPERATIONS[name]
    value = _value_type(_hints(operation.function)["return"])
    models = [model for model in _models(value) if model not in NOT_FROM_A_BODY]
    schemas = []
    for route in operation.routes:
        for status, response in spec["paths"][route.path][route.method.lower()]["responses"].items():
            content = response.get("content", {}).get("application/json")
            if status.startswith("2") and content:
                schemas += _objects(spec, content["schema"])
    for model in models:
        assert schemas, f"{name} parses {model.__name__} from a body none of its routes documents"
        attempts = [_unread(spec, model, schema, model.__name__) for schema in schemas]
        best = min(attempts, key=len)
        assert not best, f"{name}: {model.__name__} reads members its routes' schemas lack: {best}"
