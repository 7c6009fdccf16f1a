"""Resources are written once for both clients. A resource method builds a `Call` (`@endpoint`), a flow
(`@flow`) or a `Listing` (`@paged`); the decorator turns it into a method that runs it on the resource's runner.
On a `Resource[Sync]` the method returns the value, on a `Resource[Async]` a coroutine of it, and a listing
becomes a `SyncPager` or an `AsyncPager`: type checkers see exactly that (the overloads below)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

from facemint_client._convert import from_json
from facemint_client._core import ApiResponse, Call, ClientConfig, Flow, execute, query
from facemint_client.models import Page

P = ParamSpec("P")
T = TypeVar("T")


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


class Operation(Generic[P, T]):
    def __init__(self, build: Callable[Concatenate[Any, P], Flow[T]], like: Callable[..., Any]) -> None:
        self._build = build
        self._like = like

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


def endpoint(method: Callable[Concatenate[Any, P], Call[T]]) -> Operation[P, T]:
    def build(resource: Any, *args: Any, **kwargs: Any) -> Flow[T]:
        return execute(resource._config, method(resource, *args, **kwargs))

    return Operation(build, method)


def flow(method: Callable[Concatenate[Any, P], Flow[T]]) -> Operation[P, T]:
    return Operation(method, method)


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
    def __init__(self, build: Callable[Concatenate[Any, P], Listing[T]]) -> None:
        self._build = build

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


def paged(method: Callable[Concatenate[Any, P], Listing[T]]) -> Paged[P, T]:
    return Paged(method)


def listing(path: str, item: type[T], *, limit: int | None, **params: Any) -> Listing[T]:
    """A listing of `path` with these filters (None left out); `limit` is the page size (1 to 200)."""
    return Listing(path, item, query(limit=limit, **params))
