"""OpenTelemetry traces, off unless `otel_enabled` (FACEMINT_OTEL_ENABLED): one trace follows a swap from its API
request through the queue into the worker, its engine stages and its settlement (docs/operations.md, Tracing).

Off, nothing is installed: no tracer provider, no server middleware, and every helper here returns a shared
no-op context manager (or None) after one global check, so no span object is made per request or job. On, this
process gets its own SDK `TracerProvider` (never the global one: FastAPI's built-in telemetry would pick a global
provider up and add server spans of its own, query strings included), sampled by trace id ratio and respecting
the parent's decision, exporting in batches over OTLP/HTTP. One provider per process: the first configuration
wins.

The W3C trace context crosses the queue in the RQ entry's `meta` (`queue_meta`, read back by `job_span`), so the
worker's consumer span is a child of the API's producer span. Webhook deliveries happen later, on their own
schedule and possibly in another worker: each attempt is a trace of its own that names the job."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from facemint import log_setup
from facemint.config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

_PROPAGATOR = TraceContextTextMapPropagator()
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
META_KEY = "trace"  # the RQ entry's meta key holding the W3C headers (traceparent, tracestate)
# The request's or job's log fields that the server and consumer spans carry as attributes (`facemint.<name>`).
_SCOPE_FIELDS = ("request_id", "tenant_id", "user_id", "api_key_id", "job_id", "attempt")

_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def enabled() -> bool:
    return _tracer is not None


def install(provider: TracerProvider) -> None:
    """Trace through `provider` from now on (the settings' exporter, or a test's in-memory one)."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("facemint")
    log_setup.set_extra_fields(_log_ids)


def uninstall() -> TracerProvider | None:
    """Back to off; returns the provider, which its owner flushes or shuts down."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    log_setup.set_extra_fields(None)
    return provider


def configure(settings: Settings, *, component: str) -> bool:
    """Install a provider from the settings when tracing is on and this process has none; whether tracing is on.
    `component` ("api", "worker") names the service (`facemint-<component>`) unless OTEL_SERVICE_NAME does."""
    if not settings.otel_enabled or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if _provider is not None:
        return True
    # The SDK loads only where tracing is on.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; an explicit service.name would override the standard
    # OTEL_SERVICE_NAME, so it is given only when that is unset.
    service = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": f"facemint-{component}"}
    provider = TracerProvider(
        resource=Resource.create({**service, "service.namespace": "facemint"}),
        sampler=ParentBased(TraceIdRatioBased(settings.otel_sample_ratio)),
    )
    # No endpoint: the exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT (default
    # http://localhost:4318), and their headers, timeout and certificate variables.
    endpoint = f"{settings.otlp_endpoint.rstrip('/')}/v1/traces" if settings.otlp_endpoint else None
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    install(provider)
    return True


def flush(timeout_millis: int = 10_000) -> None:
    """Export what is buffered (a burst worker about to exit, an API shutting down)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def _log_ids() -> dict[str, str]:
    """The current sampled span's ids, for the JSON log lines (an unsampled trace is exported nowhere)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


def _scope_attributes() -> dict[str, Any]:
    fields = log_setup.current_fields()
    return {f"facemint.{name}": fields[name] for name in _SCOPE_FIELDS if fields.get(name) is not None}


# --- Spans for the code paths ---------------------------------------------------------------------------------


def span(
    name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> AbstractContextManager[Span | None]:
    """A child of the current span (None inside when tracing is off)."""
    if _tracer is None:
        return _NOTHING
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def annotate(span: Span | None, attributes: Mapping[str, Any]) -> None:
    if span is not None:
        span.set_attributes({name: value for name, value in attributes.items() if value is not None})


def publish_span(queue_name: str, public_id: str, *, redispatch: bool = False) -> AbstractContextManager[Span | None]:
    """The producer span of putting a job on the queue: under the request's span after a submit; the root of a
    new trace when the sweeper queues a job again (a lost entry, a retry)."""
    if _tracer is None:
        return _NOTHING
    attributes: dict[str, Any] = {
        "messaging.system": "rq",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue_name,
        "messaging.message.id": public_id,
        "facemint.job_id": public_id,
        "facemint.redispatch": redispatch,
    }
    return _tracer.start_as_current_span(f"send {queue_name}", kind=SpanKind.PRODUCER, attributes=attributes)


def queue_meta() -> dict[str, Any] | None:
    """The current trace context for the queue entry's meta (None when off)."""
    if _tracer is None:
        return None
    headers: dict[str, str] = {}
    _PROPAGATOR.inject(headers)
    return {META_KEY: headers} if headers else None


def job_span(public_id: str) -> AbstractContextManager[Span | None]:
    """The consumer span of one run of a job, a child of the context its RQ entry carries (a new trace when it
    carries none). It ends with the job's and its caller's ids from the job's log fields."""
    if _tracer is None:
        return _NOTHING
    from rq import get_current_job

    entry = get_current_job()
    headers = (entry.meta or {}).get(META_KEY) if entry is not None else None
    queue_name = entry.origin if entry is not None else "unknown"
    parent = _PROPAGATOR.extract(headers) if isinstance(headers, dict) else None
    return _consumer(_tracer, queue_name, public_id, parent)


@contextlib.contextmanager
def _consumer(tracer: Tracer, queue_name: str, public_id: str, parent: Context | None) -> Iterator[Span]:
    attributes = {
        "messaging.system": "rq",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue_name,
        "messaging.message.id": public_id,
    }
    with tracer.start_as_current_span(
        f"process {queue_name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as current:
        try:
            yield current
        finally:
            current.set_attributes(_scope_attributes())


def engine_span(operation: str, public_id: str) -> AbstractContextManager[Span | None]:
    if _tracer is None:
        return _NOTHING
    return _tracer.start_as_current_span(f"engine.{operation}", attributes={"facemint.job_id": public_id})


def record_stages(span: Span | None, timings_ms: Mapping[str, float], *, sequential: bool) -> None:
    """The engine's own stage timings under its span. An image's stages run one after another: each becomes a
    child span, laid end to end from the span's start in the engine's order. A video's are sums over frames
    processed on several threads at once: they become attributes (`facemint.stage_ms.<stage>`) instead."""
    if span is None or _tracer is None:
        return
    stages = {name: ms for name, ms in timings_ms.items() if name != "total"}
    if not sequential:
        span.set_attributes({f"facemint.stage_ms.{name}": float(ms) for name, ms in stages.items()})
        return
    at: int | None = getattr(span, "start_time", None)  # the SDK's span; a non-recording one has none
    if at is None:
        return
    parent = trace.set_span_in_context(span)
    for name, ms in stages.items():
        end = at + int(ms * 1_000_000)
        _tracer.start_span(f"engine.{name}", context=parent, start_time=at).end(end_time=end)
        at = end


def webhook_span(*, event_id: str, tenant_id: int, payload: Mapping[str, Any]) -> AbstractContextManager[Span | None]:
    """One delivery attempt of a webhook event (a trace of its own). The URL stays out: it may carry the
    receiver's token."""
    if _tracer is None:
        return _NOTHING
    data = payload.get("data")
    attributes = {
        "http.request.method": "POST",
        "facemint.webhook.event_id": event_id,
        "facemint.webhook.event_type": payload.get("type"),
        "facemint.tenant_id": tenant_id,
        "facemint.job_id": data.get("id") if isinstance(data, dict) else None,
    }
    return _tracer.start_as_current_span(
        "webhook deliver", kind=SpanKind.CLIENT, attributes={k: v for k, v in attributes.items() if v is not None}
    )


def webhook_outcome(span: Span | None, *, status: int | None, error: str | None) -> None:
    if span is None:
        return
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error is not None:
        span.set_attribute("error.type", str(status) if status is not None else "delivery_failed")
        span.set_status(StatusCode.ERROR)


# --- The API's server spans (the middleware is `facemint.middleware.TracingMiddleware`) ---------------------


def server_span(scope: Mapping[str, Any]) -> AbstractContextManager[Span | None]:
    """The server span of an HTTP request (its ASGI scope), a child of the caller's W3C `traceparent` when it
    sends one. Named by the method until routing has matched (`end_server_span`); the query string stays out."""
    if _tracer is None:
        return _NOTHING
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name in (b"traceparent", b"tracestate")
    }
    method = scope.get("method", "")
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": scope.get("scheme", "http"),
        "url.path": scope.get("path", ""),
        "network.protocol.version": scope.get("http_version", ""),
    }
    if scope.get("client"):
        attributes["network.peer.address"] = scope["client"][0]
    return _tracer.start_as_current_span(
        method or "HTTP", context=_PROPAGATOR.extract(headers), kind=SpanKind.SERVER, attributes=attributes
    )


def end_server_span(span: Span | None, scope: Mapping[str, Any], *, status_code: int | None) -> None:
    """Name the span by its route template ("POST /v1/swaps"), and add the status and the request's ids (the
    request id and, once the caller is authenticated, its tenant, user and key, from the request's log fields)."""
    if span is None:
        return
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str):
        span.update_name(f"{scope.get('method', '')} {template}")
        span.set_attribute("http.route", template)
    if status_code is not None:
        span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500:
            span.set_attribute("error.type", str(status_code))
            span.set_status(StatusCode.ERROR)
    span.set_attributes(_scope_attributes())
