"""Resources are written once for both clients. A resource method builds a `Call` (`@endpoint`), a flow
(`@flow`) or a `Listing` (`@paged`); the decorator turns it into a method that runs it on the resource's runner.
On a `Resource[Sync]` the method returns the value, on a `Resource[Async]` a coroutine of it, and a listing
becomes a `SyncPager` or an `AsyncPager`: type checkers see exactly that (the overloads below).

Each decorator names the API routes its method calls, as the API's OpenAPI document writes them
(`@endpoint("GET /v1/jobs/{job_id}")`): that is the registry `operations()` reads, and
`tests/sdk/test_route_coverage.py` holds it against the server's document both ways, so the client can neither
miss a route nor name one that does not exist."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

from facemint_client._convert import from_json
from facemint_client._core import ApiResponse, Call, ClientConfig, Flow, execute, query
from facemint_client.models import Page

P = ParamSpec("P")
T = TypeVar("T")


_HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Route:
    """An API operation: its HTTP method and path template (`Route.parse("GET /v1/jobs/{job_id}")`)."""

    method: str
    path: str

    @classmethod
    def parse(cls, text: str) -> Route:
        method, _, path = text.partition(" ")
        if method not in _HTTP_METHODS or not path.startswith("/") or " " in path:
            raise ValueError(f"a route is 'METHOD /path/{{param}}', not {text!r}")
        return cls(method, path)

    def matches(self, method: str, path: str) -> bool:
        """Whether a request (`POST`, `/admin/v1/tenants/7/suspend`) is a call of this route."""
        pattern = "".join(
            "[^/]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^}]+\})", self.path)
        )
        return method == self.method and re.fullmatch(pattern, path) is not None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _declared(routes: tuple[str, ...]) -> tuple[Route, ...]:
    if not routes:
        raise ValueError("a resource method names the route(s) it calls")
    return tuple(Route.parse(route) for route in routes)


class Sync:
    """The sync client's mode."""


class Async:
    """The async client's mode."""


M = TypeVar("M", Sync, Async)


class Resource(Generic[M]):
    def __init__(self, runner: Any) -> None:
        self._runner = runner

    @property
    def _config(self) -> ClientConfig:
        config: ClientConfig = self._runner.config
        return config


class Group:
    """A namespace of resources on a client (`client.admin`): `operations()` looks inside it."""


class Operation(Generic[P, T]):
    def __init__(
        self, build: Callable[Concatenate[Any, P], Flow[T]], like: Callable[..., Any], routes: tuple[Route, ...]
    ) -> None:
        self._build = build
        self._like = like
        self.routes = routes

    @property
    def function(self) -> Callable[..., Any]:
        """The method as written (its signature and annotations)."""
        return self._like

    @overload
    def __get__(self, obj: None, owner: Any) -> Self: ...
    @overload
    def __get__(self, obj: Resource[Sync], owner: Any) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: Resource[Async], owner: Any) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, obj: Any, owner: Any) -> Any:
        if obj is None:
            return self

        @functools.wraps(self._like)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return obj._runner.drive(self._build(obj, *args, **kwargs))

        return bound


def endpoint(*routes: str) -> Callable[[Callable[Concatenate[Any, P], Call[T]]], Operation[P, T]]:
    """A method that builds one `Call` of `routes` (usually one; more when a follow-up reads another)."""
    declared = _declared(routes)

    def decorate(method: Callable[Concatenate[Any, P], Call[T]]) -> Operation[P, T]:
        def build(resource: Any, *args: Any, **kwargs: Any) -> Flow[T]:
            return execute(resource._config, method(resource, *args, **kwargs))

        return Operation(build, method, declared)

    return decorate


def flow(*routes: str) -> Callable[[Callable[Concatenate[Any, P], Flow[T]]], Operation[P, T]]:
    """A method that is a flow of calls of `routes`."""
    declared = _declared(routes)

    def decorate(method: Callable[Concatenate[Any, P], Flow[T]]) -> Operation[P, T]:
        return Operation(method, method, declared)

    return decorate


# --- pagination ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listing(Generic[T]):
    """A cursor-paginated list: `GET path?params&limit=&cursor=`, answered `{"items": [...], "next_cursor": ...}`."""

    path: str
    item: type[T]
    params: Mapping[str, str]

    def first(self) -> Call[Page[T]]:
        return self._call(None)

    def after(self, page: Page[T]) -> Call[Page[T]] | None:
        return None if page.next_cursor is None else self._call(page.next_cursor)

    def _call(self, cursor: str | None) -> Call[Page[T]]:
        params = dict(self.params) if cursor is None else {**self.params, "cursor": cursor}
        return Call(method="GET", path=self.path, params=params, parse=self._page)

    def _page(self, response: ApiResponse) -> Page[T]:
        body = response.json()
        return Page([from_json(self.item, item) for item in body["items"]], body.get("next_cursor"))


class SyncPager(Generic[T]):
    """Every item of a list, page after page as iteration reaches it (`for tenant in client.admin.tenants.list()`).
    `pages()` yields whole pages; `first_page()` fetches one."""

    def __init__(self, runner: Any, listing: Listing[T]) -> None:
        self._runner, self._listing = runner, listing

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.items

    def pages(self) -> Iterator[Page[T]]:
        call: Call[Page[T]] | None = self._listing.first()
        while call is not None:
            page: Page[T] = self._runner.drive(execute(self._runner.config, call))
            yield page
            call = self._listing.after(page)

    def first_page(self) -> Page[T]:
        page: Page[T] = self._runner.drive(execute(self._runner.config, self._listing.first()))
        return page

    def to_list(self) -> list[T]:
        return list(self)


class AsyncPager(Generic[T]):
    """`async for` over every item of a list; `pages()` and `first_page()` as on `SyncPager`."""

    def __init__(self, runner: Any, listing: Listing[T]) -> None:
        self._runner, self._listing = runner, listing

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.items:
                yield item

    async def pages(self) -> AsyncIterator[Page[T]]:
        call: Call[Page[T]] | None = self._listing.first()
        while call is not None:
            page: Page[T] = await self._runner.drive(execute(self._runner.config, call))
            yield page
            call = self._listing.after(page)

    async def first_page(self) -> Page[T]:
        page: Page[T] = await self._runner.drive(execute(self._runner.config, self._listing.first()))
        return page

    async def to_list(self) -> list[T]:
        return [item async for item in self]


class Paged(Generic[P, T]):
    def __init__(self, build: Callable[Concatenate[Any, P], Listing[T]], routes: tuple[Route, ...]) -> None:
        self._build = build
        self.routes = routes

    @property
    def function(self) -> Callable[..., Any]:
        return self._build

    @overload
    def __get__(self, obj: None, owner: Any) -> Self: ...
    @overload
    def __get__(self, obj: Resource[Sync], owner: Any) -> Callable[P, SyncPager[T]]: ...
    @overload
    def __get__(self, obj: Resource[Async], owner: Any) -> Callable[P, AsyncPager[T]]: ...
    def __get__(self, obj: Any, owner: Any) -> Any:
        if obj is None:
            return self

        @functools.wraps(self._build)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return obj._runner.pager(self._build(obj, *args, **kwargs))

        return bound


def paged(*routes: str) -> Callable[[Callable[Concatenate[Any, P], Listing[T]]], Paged[P, T]]:
    """A method that lists `routes` (one GET), page after page."""
    declared = _declared(routes)

    def decorate(method: Callable[Concatenate[Any, P], Listing[T]]) -> Paged[P, T]:
        return Paged(method, declared)

    return decorate


def listing(path: str, item: type[T], *, limit: int | None, **params: Any) -> Listing[T]:
    """A listing of `path` with these filters (None left out); `limit` is the page size (1 to 200)."""
    return Listing(path, item, query(limit=limit, **params))


# --- the route registry --------------------------------------------------------------------------------------


def operations(root: object, prefix: str = "") -> Iterator[tuple[str, Operation[Any, Any] | Paged[Any, Any]]]:
    """Every operation reachable from a client, by the name it is called by (`admin.tenants.get`), each with the
    `routes` it declares."""
    for name, value in vars(root).items():
        if name.startswith("_"):
            continue
        if isinstance(value, Group):
            yield from operations(value, f"{prefix}{name}.")
        elif isinstance(value, Resource):
            members: dict[str, Any] = {}
            for cls in reversed(type(value).__mro__):
                members.update(vars(cls))
            for attr, member in sorted(members.items()):
                if isinstance(member, Operation | Paged):
                    yield f"{prefix}{name}.{attr}", member
