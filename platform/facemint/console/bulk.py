"""Bulk recharge from the console, as a flow over the batch service (no HTTP here):

- a preview: the uploaded CSV parsed and run as the API's dry run, kept in Redis with its options and an
  idempotency key fixed right then, under a random id that only its maker may use;
- the confirmed apply: the same file, options and key given to `submit_batch` for real, in a background thread
  with a session and commit of its own, which reports its phase in Redis for the result page to poll. However
  often a preview is confirmed (a double click, a refresh, back and again), it is applied once: one run at a time
  may be claimed for it, and a second run under the same key replays the first one's batch."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from billing.errors import BillingError, InsufficientTokens
from billing.ledger import service as ledger
from facemint.approvals import service as approvals
from facemint.config import Settings
from facemint.console.errors import PreviewNotFound
from facemint.context import RequestContext
from facemint.db import unit_of_work
from facemint.errors import FacemintError
from facemint.recharges import batch as batch_service
from facemint.recharges.errors import BatchRejected
from facemint.recharges.origin import Origin, source_for
from facemint.recharges.parsing import parse_csv

logger = logging.getLogger(__name__)

_KEY = "facemint:console:bulk:{}"
CSV_KIND = "text/csv"
# A run that has not reported for this long is taken for dead (its process ended): the preview may be confirmed
# again, and the key replays whatever that run committed.
RUN_CLAIM_SECONDS = 600
# Where each phase puts the progress bar (percent); the labels are the result page's.
PHASES: dict[str, tuple[int, str]] = {
    "queued": (5, "Queued"),
    "parsing": (10, "Reading the file"),
    "validating": (30, "Checking every row"),
    "writing": (60, "Writing the ledger entries"),
    "committing": (90, "Committing"),
    "committed": (100, "Applied"),
    "held": (100, "Held for approval"),
    "failed": (100, "Failed"),
}
DONE = frozenset({"committed", "held", "failed"})


@dataclass(frozen=True, slots=True)
class Preview:
    """A dry run of an uploaded file: what confirming it would apply, and the key it will be applied under.
    `rejected`: an atomic batch with failing rows (nothing can apply); `pool`: when a tenant pool pays, what it
    holds and whether it covers the total."""

    preview_id: str
    user_id: int
    filename: str
    mode: str
    reason: str
    tenant_id: int | None
    idempotency_key: str
    result: dict[str, Any]
    rejected: bool
    pool: dict[str, Any] | None
    created_at: float

    @property
    def can_apply(self) -> bool:
        return not self.rejected and (self.pool is None or self.pool["covers"]) and self.result["applied"] > 0


@dataclass(frozen=True, slots=True)
class RunState:
    phase: str
    rows: int
    result: dict[str, Any] | None = None
    approval_id: int | None = None
    replayed: bool = False
    error: dict[str, Any] | None = None
    updated_at: float = 0.0

    @property
    def done(self) -> bool:
        return self.phase in DONE

    @property
    def percent(self) -> int:
        return PHASES.get(self.phase, (0, ""))[0]

    @property
    def label(self) -> str:
        return PHASES.get(self.phase, (0, self.phase))[1]


class PreviewStore:
    """Previews and their runs in Redis: `console:bulk:<id>` (the preview), `:body` (the file), `:run` (the run's
    state) and `:claim` (held while a run is under way). All expire with the preview."""

    def __init__(self, redis: Redis, *, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds

    def save(self, preview: Preview, body: bytes) -> None:
        key = _KEY.format(preview.preview_id)
        pipe = self.redis.pipeline()
        pipe.set(key, json.dumps(asdict(preview)), ex=self.ttl_seconds)
        pipe.set(f"{key}:body", body, ex=self.ttl_seconds)
        pipe.execute()

    def load(self, preview_id: str, *, user_id: int) -> Preview:
        """The preview, for the user who made it only (anyone else is told it does not exist)."""
        raw = self.redis.get(_KEY.format(preview_id)) if 0 < len(preview_id) <= 64 else None
        preview = Preview(**json.loads(raw)) if raw is not None else None
        if preview is None or preview.user_id != user_id:
            raise PreviewNotFound("this preview does not exist or has expired; upload the file again")
        return preview

    def body(self, preview_id: str) -> bytes | None:
        raw = self.redis.get(f"{_KEY.format(preview_id)}:body")
        return raw.encode() if isinstance(raw, str) else raw

    def claim_run(self, preview_id: str) -> bool:
        """Whether this caller may start the preview's run: one at a time, and never after one committed."""
        state = self.run_state(preview_id)
        if state is not None and state.phase in ("committed", "held"):
            return False
        claimed = self.redis.set(f"{_KEY.format(preview_id)}:claim", "1", nx=True, ex=RUN_CLAIM_SECONDS)
        return bool(claimed)

    def release_run(self, preview_id: str) -> None:
        self.redis.delete(f"{_KEY.format(preview_id)}:claim")

    def report(self, preview_id: str, state: RunState) -> None:
        state_key = f"{_KEY.format(preview_id)}:run"
        pipe = self.redis.pipeline()
        pipe.set(state_key, json.dumps({**asdict(state), "updated_at": time.time()}), ex=self.ttl_seconds)
        if not state.done:
            pipe.expire(f"{_KEY.format(preview_id)}:claim", RUN_CLAIM_SECONDS)
        pipe.execute()

    def run_state(self, preview_id: str) -> RunState | None:
        raw = self.redis.get(f"{_KEY.format(preview_id)}:run")
        return RunState(**json.loads(raw)) if raw is not None else None


def make_preview(
    session: Session,
    *,
    context: RequestContext,
    settings: Settings,
    body: bytes,
    filename: str,
    mode: str,
    reason: str,
    tenant_id: int | None,
) -> Preview:
    """Parse the file and dry-run it exactly as `POST /admin/v1/recharges/batch?dry_run=true` would."""
    parsed = parse_csv(body, max_rows=settings.batch_max_rows, ceiling=settings.recharge_max_amount)
    request = batch_service.BatchRequest(
        mode=mode,
        dry_run=True,
        reason=reason,
        tenant_id=tenant_id,
        idempotency_key="preview",  # a dry run stores nothing under it
        content_kind=CSV_KIND,
        body=body,
    )
    policy = approvals.Policy.from_settings(settings)
    rejected, short_pool = False, False
    try:
        # In a savepoint: a refused dry run leaves its temporary tables behind, and the rows are staged again.
        with session.begin_nested():
            result = batch_service.submit_batch(
                session, context=context, request=request, parsed=parsed, policy=policy
            ).result
    except BatchRejected as exc:
        result, rejected = {key: exc.extra[key] for key in ("rows", "applied", "total_amount", "failed")}, True
    except InsufficientTokens:
        # The pool cannot pay it: still show every row, staged as the dry run would, and what the pool holds.
        short_pool = True
        with session.begin_nested():
            staged = batch_service.stage(
                session,
                origin=Origin.of(context.principal),
                tenant_id=tenant_id,
                mode=mode,
                dry_run=True,
                parsed=parsed,
            )
        result = staged.result
    source = source_for(session, context.principal)
    pool = None
    if source.tracked and not rejected:
        available = ledger.get_balance(session, account_id=source.account_id).available
        pool = {"available": available, "needed": result["total_amount"], "covers": not short_pool}
    return Preview(
        preview_id=secrets.token_urlsafe(18),
        user_id=context.principal.user_id,
        filename=filename[:200],
        mode=mode,
        reason=reason,
        tenant_id=tenant_id,
        idempotency_key=f"console-bulk-{secrets.token_urlsafe(18)}",
        result={
            "rows": result["rows"],
            "applied": result["applied"],
            "total_amount": result["total_amount"],
            "failed": result["failed"],
            "approval_required": bool(result.get("approval_required")),
        },
        rejected=rejected,
        pool=pool,
        created_at=time.time(),
    )


def start_apply(
    factory: sessionmaker[Session],
    store: PreviewStore,
    *,
    settings: Settings,
    preview: Preview,
    context: RequestContext,
) -> bool:
    """Apply a confirmed preview in the background; False when a run is already under way or done (the caller
    shows that one). Refuses a preview that cannot apply, as the real run would."""
    if preview.rejected:
        raise BatchRejected("this atomic batch has failing rows; nothing can be applied", **preview.result)
    if not store.claim_run(preview.preview_id):
        return False
    store.report(preview.preview_id, RunState(phase="queued", rows=preview.result["rows"]))
    thread = threading.Thread(
        target=_apply,
        args=(factory, store, settings, preview, context),
        name=f"console-bulk-{preview.preview_id[:8]}",
        daemon=True,
    )
    thread.start()
    return True


def _apply(
    factory: sessionmaker[Session], store: PreviewStore, settings: Settings, preview: Preview, context: RequestContext
) -> None:
    preview_id, rows = preview.preview_id, preview.result["rows"]

    def report(phase: str, **extra: Any) -> None:
        store.report(preview_id, RunState(phase=phase, rows=rows, **extra))

    try:
        body = store.body(preview_id)
        if body is None:
            raise PreviewNotFound("the preview expired before it was applied; upload the file again")
        report("parsing")
        parsed = parse_csv(body, max_rows=settings.batch_max_rows, ceiling=settings.recharge_max_amount)
        request = batch_service.BatchRequest(
            mode=preview.mode,
            dry_run=False,
            reason=preview.reason,
            tenant_id=preview.tenant_id,
            idempotency_key=preview.idempotency_key,
            content_kind=CSV_KIND,
            body=body,
        )
        with unit_of_work(factory) as session:
            outcome = batch_service.submit_batch(
                session,
                context=context,
                request=request,
                parsed=parsed,
                policy=approvals.Policy.from_settings(settings),
                progress=report,
            )
            report("committing")
    except (FacemintError, BillingError) as exc:
        error = {**exc.extra, "status": exc.status_code, "code": exc.code, "title": exc.title, "detail": exc.detail}
        report("failed", error=error)
        store.release_run(preview_id)
        return
    except Exception:
        logger.exception("bulk recharge %s failed", preview_id)
        report(
            "failed",
            error={"status": 500, "code": "internal_error", "title": "Internal error", "detail": "see the logs"},
        )
        store.release_run(preview_id)
        return
    if outcome.held is not None:
        report("held", approval_id=outcome.held.approval.id, replayed=outcome.held.replayed)
    else:
        report("committed", result=outcome.result, replayed=not outcome.created)
    store.release_run(preview_id)
