"""OpenTelemetry traces (facemint.tracing): off by default, and then nothing is installed, queued or exported; on,
one trace follows a swap from its API request through the queue into the worker, its engine stages and its
settlement, in the SDK's in-memory exporter and, across a real worker process, at a real OTLP/HTTP receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis import Redis
from rq.job import Job as RQJob

from facemint import tracing
from facemint.app import create_app
from facemint.config import Settings
from facemint.db import make_engine, make_sessionmaker
from facemint.webhooks import sender
from tests.jobs.conftest import JsonLines, Payer, submit, wait_for
from tests.jobs.video_job_helpers import accepted_video, clip_bytes
from tests.otlp_receiver import OtlpReceiver, serve_otlp_receiver
from tests.platform.webhook_helpers import Receiver, serve_receiver

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with serve_otlp_receiver() as receiver:
        yield receiver


@pytest.fixture
def webhook_receiver() -> Iterator[Receiver]:
    with serve_receiver() as receiver:
        yield receiver


@pytest.fixture
def no_provider() -> Iterator[None]:
    """The test starts with tracing off and leaves it off, whatever it configured (its provider flushed)."""
    assert not tracing.enabled()
    yield
    provider = tracing.uninstall()
    if provider is not None:
        provider.shutdown()


@pytest.fixture
def spans(no_provider: None) -> Iterator[InMemorySpanExporter]:
    """Tracing on through the SDK's in-memory exporter (every span, as it ends)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    return exporter


@pytest.fixture
def traced_settings(job_settings: Settings) -> Settings:
    return job_settings.model_copy(update={"otel_enabled": True})


def _hex(span: ReadableSpan, *, parent: bool = False) -> str:
    context = span.parent if parent else span.context
    if context is None:
        return ""
    return format(context.span_id, "016x")


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [span for span in spans if span.name == name]
    assert len(matching) == 1, (name, [span.name for span in spans])
    return matching[0]


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [span for span in spans if span.parent is not None and span.parent.span_id == parent.context.span_id]


def test_off_by_default_nothing_is_installed_queued_logged_or_exported(
    monkeypatch: pytest.MonkeyPatch,
    no_provider: None,
    otlp_receiver: OtlpReceiver,
    job_settings: Settings,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    json_lines: JsonLines,
) -> None:
    assert Settings.model_fields["otel_enabled"].default is False
    # The standard exporter variables alone do not turn tracing on.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    app = create_app(job_settings)
    assert not tracing.enabled()
    payer = make_payer()
    with TestClient(app) as client:
        response = submit(client, payer, headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        # The queue entry carries no trace context.
        redis = Redis.from_url(job_settings.redis_url or "")
        try:
            assert RQJob.fetch(job_id, connection=redis).meta == {}
        finally:
            redis.close()
        drain()
        assert client.get(f"/v1/jobs/{job_id}", headers=payer.headers).json()["status"] == "succeeded"
    assert not tracing.enabled()
    tracing.flush()
    assert otlp_receiver.requests == 0
    lines = [line for line in json_lines() if line.get("job_id") == job_id or "request_id" in line]
    assert lines
    assert not [line for line in lines if "trace_id" in line or "span_id" in line]


def test_one_trace_follows_a_swap_from_the_request_through_the_queue_into_the_worker_and_its_settlement(
    spans: InMemorySpanExporter,
    traced_settings: Settings,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    json_lines: JsonLines,
    webhook_receiver: Receiver,
) -> None:
    payer = make_payer()
    with TestClient(create_app(traced_settings)) as client:
        response = submit(
            client,
            payer,
            headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            data={"webhook_url": webhook_receiver.url("/hook")},
        )
        assert response.status_code == 202, response.text
        job_id, request_id = response.json()["id"], response.headers["x-request-id"]
        drain(traced_settings)
        assert client.get(f"/v1/jobs/{job_id}", headers=payer.headers).json()["status"] == "succeeded"

    finished = list(spans.get_finished_spans())
    trace = [span for span in finished if format(span.context.trace_id, "032x") == CALLER_TRACE]
    queue_name = traced_settings.queue_name

    # The API: the server span continues the caller's traceparent, and holds the submit and the queueing.
    server = _one(trace, "POST /v1/swaps")
    assert server.kind is SpanKind.SERVER
    assert _hex(server, parent=True) == CALLER_SPAN
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/swaps"
    assert server.attributes["http.response.status_code"] == 202
    assert server.attributes["facemint.request_id"] == request_id
    assert (server.attributes["facemint.tenant_id"], server.attributes["facemint.user_id"]) == (
        payer.tenant_id,
        payer.user_id,
    )
    assert not any("query" in name for name in server.attributes)
    submitted = _one(trace, "job.submit")
    assert submitted.attributes is not None
    assert (submitted.attributes["facemint.job_id"], submitted.attributes["facemint.replayed"]) == (job_id, False)
    published = _one(trace, f"send {queue_name}")
    assert published.kind is SpanKind.PRODUCER
    assert {_hex(submitted, parent=True), _hex(published, parent=True)} == {_hex(server)}

    # The worker: a consumer span under the producer, with the claim, the engine and the capture under it.
    consumer = _one(trace, f"process {queue_name}")
    assert consumer.kind is SpanKind.CONSUMER
    assert _hex(consumer, parent=True) == _hex(published)
    assert consumer.attributes is not None
    assert consumer.attributes["facemint.job_id"] == job_id
    assert consumer.attributes["facemint.attempt"] == 1
    assert consumer.attributes["facemint.tenant_id"] == payer.tenant_id
    assert consumer.attributes["facemint.outcome"] == "succeeded"
    under_consumer = [span.name for span in sorted(_children(trace, consumer), key=lambda span: span.start_time or 0)]
    assert under_consumer[:3] == ["job.claim", "engine.swap_image", "job.capture"], under_consumer
    engine = _one(trace, "engine.swap_image")
    stages = sorted(_children(trace, engine), key=lambda span: span.start_time or 0)
    assert {"engine.decode", "engine.detect", "engine.swap", "engine.paste", "engine.encode"} <= {
        stage.name for stage in stages
    }
    assert stages[0].name == "engine.decode"
    assert stages[-1].name == "engine.encode"
    assert all(span.end_time is not None for span in trace)

    # The JSON log lines name the trace and the span they were logged under.
    trace_span_ids = {_hex(span) for span in trace}
    logged = [line for line in json_lines() if line.get("request_id") == request_id or line.get("job_id") == job_id]
    assert logged
    assert {line.get("trace_id") for line in logged} == {CALLER_TRACE}
    assert {line["span_id"] for line in logged} <= trace_span_ids
    # The claim's statements are logged under the claim's span.
    assert _hex(_one(trace, "job.claim")) in {line["span_id"] for line in logged if line.get("job_id") == job_id}

    # The webhook's delivery: a trace of its own (it runs later, wherever a sender picks it up) naming the job.
    sessions = make_sessionmaker(make_engine(traced_settings.database_url or "", pool_size=1))
    sender.deliver_due(sessions, settings=traced_settings)
    delivered = wait_for(lambda: [span for span in spans.get_finished_spans() if span.name == "webhook deliver"])
    assert len(delivered) == 1
    assert delivered[0].kind is SpanKind.CLIENT
    assert delivered[0].attributes is not None
    assert delivered[0].attributes["facemint.job_id"] == job_id
    assert delivered[0].attributes["http.response.status_code"] == 200
    assert format(delivered[0].context.trace_id, "032x") != CALLER_TRACE
    assert len(webhook_receiver.calls_to("/hook")) == 1


def test_a_real_worker_process_exports_its_half_of_the_trace_to_an_otlp_receiver(
    no_provider: None,
    otlp_receiver: OtlpReceiver,
    job_settings: Settings,
    make_payer: Callable[..., Payer],
    start_worker: Callable[..., Any],
) -> None:
    settings = job_settings.model_copy(update={"otel_enabled": True, "otlp_endpoint": otlp_receiver.url})
    payer = make_payer()
    with TestClient(create_app(settings)) as client:
        response = submit(client, payer)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        tracing.flush()  # the API's half, from this process
        start_worker(
            FACEMINT_OTEL_ENABLED="true",
            FACEMINT_OTLP_ENDPOINT=otlp_receiver.url,
            OTEL_BSP_SCHEDULE_DELAY="100",  # export within 0.1 s of a span ending, not 5 s
        )
        wait_for(lambda: client.get(f"/v1/jobs/{job_id}", headers=payer.headers).json()["status"] == "succeeded")

    def worker_spans() -> list[Any]:
        """The worker's spans, once its capture (the last of the run's) has arrived."""
        received = [span for span in otlp_receiver.received() if span.service == "facemint-worker"]
        return received if any(span.name == "job.capture" for span in received) else []

    worker = wait_for(worker_spans)
    api = [span for span in otlp_receiver.received() if span.service == "facemint-api"]
    server = next(span for span in api if span.name == "POST /v1/swaps")
    assert server.kind == ProtoSpan.SPAN_KIND_SERVER
    assert server.parent_span_id == ""
    published = next(span for span in api if span.kind == ProtoSpan.SPAN_KIND_PRODUCER)
    assert published.parent_span_id == server.span_id
    consumer = next(span for span in worker if span.kind == ProtoSpan.SPAN_KIND_CONSUMER)
    assert consumer.parent_span_id == published.span_id
    assert consumer.attributes["facemint.job_id"] == job_id
    capture = next(span for span in worker if span.name == "job.capture")
    assert capture.parent_span_id == consumer.span_id
    assert {span.trace_id for span in (server, published, consumer, capture)} == {server.trace_id}


def test_a_videos_engine_span_carries_its_stage_sums_as_attributes(
    spans: InMemorySpanExporter,
    traced_settings: Settings,
    make_payer: Callable[..., Payer],
    drain: Callable[..., None],
    tmp_path: Path,
) -> None:
    payer = make_payer(50)
    with TestClient(create_app(traced_settings)) as client:
        job_id = accepted_video(client, payer, clip_bytes(tmp_path, seconds=1))
        drain(traced_settings)
        assert client.get(f"/v1/jobs/{job_id}", headers=payer.headers).json()["status"] == "succeeded"

    finished = list(spans.get_finished_spans())
    consumer = _one(finished, f"process {traced_settings.queue_name}")
    engine = _one(finished, "engine.swap_video")
    assert _hex(engine, parent=True) == _hex(consumer)
    # Sums over frames processed on several threads at once: attributes, not spans laid end to end.
    assert _children(finished, engine) == []
    assert engine.attributes is not None
    stages = {name.removeprefix("facemint.stage_ms.") for name in engine.attributes if "stage_ms" in name}
    assert {"probe", "decode", "detect", "swap", "encode"} <= stages, stages
    assert "total" not in stages
