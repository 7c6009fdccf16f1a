"""The two clients: the only I/O in the package. A runner performs a flow's effects (`facemint_client._core`)
with httpx and a sleep, and that is all that differs between `Facemint` and `AsyncFacemint`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Generic, Self, TypeVar

import httpx

from facemint_client._core import ClientConfig, Effect, Flow, Read, Send, Sleep, make_config
from facemint_client._resource import Async, AsyncPager, Listing, M, Sync, SyncPager
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


H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class _Client(Generic[M, H]):
    """What both clients are: the configuration, the httpx client, and the resources on a runner of their mode."""

    auth: Auth[M]
    account: Account[M]
    jobs: Jobs[M]
    admin: Admin[M]
    config: ClientConfig
    _http: H
    _owns_http: bool

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
        http_client: H | None = None,
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
        self._attach(config, http_client if http_client is not None else self._new_http())

    def _new_http(self) -> H:
        raise NotImplementedError

    def _runner(self, config: ClientConfig, http: H) -> SyncRunner | AsyncRunner:
        raise NotImplementedError

    def _attach(self, config: ClientConfig, http: H) -> None:
        self.config, self._http = config, http
        runner = self._runner(config, http)
        self.auth, self.account, self.jobs, self.admin = Auth(runner), Account(runner), Jobs(runner), Admin(runner)

    def with_options(self, **changes: Any) -> Self:
        """A client sharing this one's connections with other settings: `api_key`, `base_url`, `timeout`,
        `headers`, or `retry` fields (`max_retries`, `deadline`, `initial_delay`...)."""
        clone = object.__new__(type(self))
        clone._owns_http = False
        clone._attach(_changed(self.config, changes), self._http)
        return clone


class Facemint(_Client[Sync, httpx.Client]):
    __doc__ = "The sync client." + _OPTIONS_DOC

    def _new_http(self) -> httpx.Client:
        return httpx.Client()

    def _runner(self, config: ClientConfig, http: httpx.Client) -> SyncRunner:
        return SyncRunner(config, http)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFacemint(_Client[Async, httpx.AsyncClient]):
    __doc__ = "The async client: the same resources as `Facemint`, each method a coroutine." + _OPTIONS_DOC

    def _new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient()

    def _runner(self, config: ClientConfig, http: httpx.AsyncClient) -> AsyncRunner:
        return AsyncRunner(config, http)

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
