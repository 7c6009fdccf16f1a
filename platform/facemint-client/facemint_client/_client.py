"""The two clients: the only I/O in the package. A runner performs a flow's effects (`facemint_client._core`)
with httpx and a sleep, and that is all that differs between `Facemint` and `AsyncFacemint`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Self, TypeVar

import httpx

from facemint_client._core import ClientConfig, Effect, Flow, Read, Send, Sleep, make_config
from facemint_client._resource import Async, AsyncPager, Listing, Sync, SyncPager
from facemint_client._retry import RetryPolicy
from facemint_client.resources import Account, Admin, Auth, Jobs

T = TypeVar("T")


class SyncRunner:
    def __init__(self, config: ClientConfig, http: httpx.Client) -> None:
        self.config, self.http = config, http

    def drive(self, flow: Flow[T]) -> T:
        answer: Any = None
        failure: httpx.TransportError | None = None
        while True:
            try:
                effect = flow.throw(failure) if failure is not None else flow.send(answer)
            except StopIteration as stop:
                result: T = stop.value
                return result
            answer, failure = None, None
            try:
                answer = self._perform(effect)
            except httpx.TransportError as exc:
                failure = exc
            except BaseException:
                flow.close()
                raise

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Send):
            request = self.http.build_request(**effect.request)
            response = self.http.send(request, stream=effect.stream, follow_redirects=effect.stream)
            if not effect.stream:
                response.read()
            return response
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        if isinstance(effect, Read):
            try:
                effect.response.read()
            finally:
                effect.response.close()
            return effect.response
        try:
            for chunk in effect.response.iter_bytes():
                effect.sink(chunk)
        finally:
            effect.response.close()
        return None

    def pager(self, listing: Listing[T]) -> SyncPager[T]:
        return SyncPager(self, listing)


class AsyncRunner:
    def __init__(self, config: ClientConfig, http: httpx.AsyncClient) -> None:
        self.config, self.http = config, http

    async def drive(self, flow: Flow[T]) -> T:
        answer: Any = None
        failure: httpx.TransportError | None = None
        while True:
            try:
                effect = flow.throw(failure) if failure is not None else flow.send(answer)
            except StopIteration as stop:
                result: T = stop.value
                return result
            answer, failure = None, None
            try:
                answer = await self._perform(effect)
            except httpx.TransportError as exc:
                failure = exc
            except BaseException:
                flow.close()
                raise

    async def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Send):
            request = self.http.build_request(**effect.request)
            response = await self.http.send(request, stream=effect.stream, follow_redirects=effect.stream)
            if not effect.stream:
                await response.aread()
            return response
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        if isinstance(effect, Read):
            try:
                await effect.response.aread()
            finally:
                await effect.response.aclose()
            return effect.response
        try:
            async for chunk in effect.response.aiter_bytes():
                effect.sink(chunk)
        finally:
            await effect.response.aclose()
        return None

    def pager(self, listing: Listing[T]) -> AsyncPager[T]:
        return AsyncPager(self, listing)


_OPTIONS_DOC = """
    `api_key`: an API key (`fmk_...`) or an access token (`client.auth.token(...)`); default FACEMINT_API_KEY.
    `base_url`: default FACEMINT_API_URL, else http://127.0.0.1:8000. `timeout`: seconds per attempt.
    `max_retries` (default 2) and `deadline` (seconds for a whole call, retries included; default none) adjust
    `retry`, the full `RetryPolicy`. `headers` go on every request. `http_client`: your own httpx client
    (proxies, TLS, transports); it is not closed by `close()`.
"""


class Facemint:
    __doc__ = "The sync client." + _OPTIONS_DOC

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int | None = None,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        config = make_config(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            deadline=deadline,
            retry=retry,
            headers=headers,
        )
        self._owns_http = http_client is None
        self._setup(config, http_client or httpx.Client())

    def _setup(self, config: ClientConfig, http: httpx.Client) -> None:
        self.config, self._http = config, http
        runner = SyncRunner(config, http)
        self.auth: Auth[Sync] = Auth(runner)
        self.account: Account[Sync] = Account(runner)
        self.jobs: Jobs[Sync] = Jobs(runner)
        self.admin: Admin[Sync] = Admin(runner)

    def with_options(self, **changes: Any) -> Facemint:
        """A client sharing this one's connections with other settings: `api_key`, `base_url`, `timeout`,
        `headers`, or `retry` fields (`max_retries`, `deadline`, `initial_delay`...)."""
        clone = object.__new__(Facemint)
        clone._owns_http = False
        clone._setup(_changed(self.config, changes), self._http)
        return clone

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFacemint:
    __doc__ = "The async client: the same resources as `Facemint`, each method a coroutine." + _OPTIONS_DOC

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int | None = None,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        config = make_config(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            deadline=deadline,
            retry=retry,
            headers=headers,
        )
        self._owns_http = http_client is None
        self._setup(config, http_client or httpx.AsyncClient())

    def _setup(self, config: ClientConfig, http: httpx.AsyncClient) -> None:
        self.config, self._http = config, http
        runner = AsyncRunner(config, http)
        self.auth: Auth[Async] = Auth(runner)
        self.account: Account[Async] = Account(runner)
        self.jobs: Jobs[Async] = Jobs(runner)
        self.admin: Admin[Async] = Admin(runner)

    def with_options(self, **changes: Any) -> AsyncFacemint:
        """As `Facemint.with_options`."""
        clone = object.__new__(AsyncFacemint)
        clone._owns_http = False
        clone._setup(_changed(self.config, changes), self._http)
        return clone

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _changed(config: ClientConfig, changes: dict[str, Any]) -> ClientConfig:
    retry_fields = set(RetryPolicy.__dataclass_fields__)
    retry = replace(config.retry, **{k: v for k, v in changes.items() if k in retry_fields})
    rest = {k: v for k, v in changes.items() if k not in retry_fields}
    if "base_url" in rest and rest["base_url"]:
        rest["base_url"] = str(rest["base_url"]).rstrip("/")
    return replace(config, retry=retry, **rest)
