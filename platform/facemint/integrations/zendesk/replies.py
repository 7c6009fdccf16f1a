"""The reply, a worker task: every `facemint worker` runs a `ReplySender` round every `zendesk_poll_seconds` in a
background thread (as it runs the webhook sender), never inside an RQ job, so a slow Zendesk never holds a swap
worker, and retries wait in Postgres (`next_attempt_at`), not in a scheduler.

A round:
1. settled swaps: tickets waiting for a job (`swapping`) whose job has settled move on: due to reply
   (`replying`) if it succeeded, `failed` otherwise. The job's settlement (its capture or release) and its
   terminal status are one transaction, so a reply becomes due exactly when the swap is paid for, never before;
2. claims: due replies are leased (`lease_token`, `next_attempt_at` moved to the lease's end, `attempts` + 1) with
   SKIP LOCKED, so workers share them and a reply whose worker died is claimed again once its lease ends;
3. each claimed reply, up to `zendesk_concurrency` at once: the result (copied from the job into the cache the
   first time: a job's own result expires), the upload (`POST /api/v2/uploads`, its token and attachment id
   recorded), then the comment (`PUT /api/v2/tickets/{id}`). Each step is recorded as it completes and fenced
   by the lease: a step whose lease was taken over changes nothing.

One reply per ticket: a recorded upload is reused (while fresh), and before a comment is sent again after one
was sent (its outcome lost: a timeout, a crash), the ticket's newest comments are read for our attachment; if it
is there, the reply is recorded as posted. Failures retry with `zendesk_backoff_seconds` (a 429 after its
Retry-After) up to `zendesk_max_attempts`, then fail; a final answer (bad credentials, no such ticket) fails at
once. Every step is audited (`zendesk.swap.settled`, `zendesk.reply.uploaded`, `zendesk.reply.posted`,
`zendesk.reply.retry`, `zendesk.reply.failed`, `zendesk.ticket.failed`)."""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, text, update
from sqlalchemy.orm import Session, sessionmaker

from facemint.audit import service as audit
from facemint.config import Settings
from facemint.db import unit_of_work
from facemint.integrations.credentials import CredentialKeysMissing, CredentialUnreadable
from facemint.integrations.zendesk import service
from facemint.integrations.zendesk.client import ZendeskClient, ZendeskError
from facemint.integrations.zendesk.orm import (
    ResultStatus,
    TicketStatus,
    ZendeskConnector,
    ZendeskResult,
    ZendeskTicket,
)
from facemint.jobs.orm import Job, JobStatus
from facemint.storage import ObjectMissing, Storage

logger = logging.getLogger("facemint.integrations.zendesk")
BATCH = 100
# An upload's token is used within this long, else the image is uploaded again (Zendesk expires unused tokens).
UPLOAD_FRESH_SECONDS = 1800
# A lease covers an attempt's three calls, each within its timeout (connect and read), plus copying the result.
LEASE_MARGIN_SECONDS = 30.0
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}

_FAIL_RESULTS = text(
    """
    UPDATE zendesk_results r SET status = 'failed'
      FROM jobs j
     WHERE r.status = 'pending' AND j.id = r.job_id AND j.status IN ('failed', 'canceled')
    """
)
# Tickets whose swap has settled: to reply (succeeded) or failed. Rows locked by another round are left to it.
_SETTLED = text(
    """
    WITH settled AS (
        SELECT t.id, j.status AS job_status, j.error_code
          FROM zendesk_tickets t
          JOIN zendesk_results r ON r.id = t.result_id
          JOIN jobs j ON j.id = r.job_id
         WHERE t.status = 'swapping' AND j.status IN ('succeeded', 'failed', 'canceled')
         ORDER BY t.id
         LIMIT :limit
           FOR UPDATE OF t SKIP LOCKED
    )
    UPDATE zendesk_tickets t
       SET status = CASE WHEN s.job_status = 'succeeded' THEN 'replying' ELSE 'failed' END,
           reason = CASE WHEN s.job_status = 'succeeded' THEN NULL ELSE 'swap_' || s.job_status END,
           last_error = CASE WHEN s.job_status = 'succeeded' THEN NULL ELSE s.error_code END,
           next_attempt_at = CASE WHEN s.job_status = 'succeeded' THEN now() END,
           updated_at = now()
      FROM settled s
     WHERE t.id = s.id
    RETURNING t.id, t.tenant_id, t.zendesk_ticket_id, t.status, t.reason, s.job_status, s.error_code
    """
)
_CLAIM = text(
    """
    UPDATE zendesk_tickets t
       SET lease_token = :token, attempts = t.attempts + 1, updated_at = now(),
           next_attempt_at = now() + :lease * interval '1 second'
     WHERE t.id IN (SELECT id FROM zendesk_tickets
                     WHERE status = 'replying' AND next_attempt_at <= now()
                     ORDER BY next_attempt_at
                     LIMIT :limit
                       FOR UPDATE SKIP LOCKED)
    RETURNING t.id, t.tenant_id, t.connector_id, t.zendesk_ticket_id, t.result_id, t.upload_token,
              t.attachment_id, t.put_sent_at IS NOT NULL AS put_sent,
              coalesce(extract(epoch FROM now() - t.uploaded_at), 0) AS upload_age, t.attempts
    """
)


@dataclass(frozen=True, slots=True)
class Claim:
    id: int
    tenant_id: int
    connector_id: int
    zendesk_ticket_id: int
    result_id: int
    upload_token: str | None
    attachment_id: int | None
    put_sent: bool
    upload_age: float
    attempts: int
    lease_token: str


class Final(Exception):
    """The reply cannot be made, whatever is retried (the swap failed, its result is gone)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class LeaseLost(Exception):
    """Another sender holds the reply now: this attempt stops and records nothing more."""


def _audit(session: Session, *, tenant_id: int, ticket_id: int, action: str, after: dict[str, Any]) -> None:
    audit.record(
        session,
        context=None,  # the worker: no request, no user
        action=action,
        target_type="zendesk_ticket",
        target_id=ticket_id,
        tenant_id=tenant_id,
        after=after,
    )


def advance_settled(session: Session, *, limit: int = BATCH) -> int:
    """Step 1 of a round (in the caller's transaction): tickets of settled swaps to `replying` or `failed`, and
    results of failed jobs out of the cache. Returns how many tickets moved."""
    session.execute(_FAIL_RESULTS)
    rows = session.execute(_SETTLED, {"limit": limit}).all()
    for row in rows:
        action = "zendesk.swap.settled" if row.status == TicketStatus.replying.value else "zendesk.ticket.failed"
        after = {"zendesk_ticket_id": row.zendesk_ticket_id, "job_status": row.job_status, "status": row.status}
        if row.reason:
            after |= {"reason": row.reason, "error_code": row.error_code}
        _audit(session, tenant_id=row.tenant_id, ticket_id=row.id, action=action, after=after)
    return len(rows)


def claim_due(session: Session, *, limit: int, lease_seconds: float) -> list[Claim]:
    """Step 2 (in the caller's transaction): lease up to `limit` due replies."""
    token = secrets.token_urlsafe(16)
    rows = session.execute(_CLAIM, {"token": token, "lease": lease_seconds, "limit": limit}).all()
    return [
        Claim(
            id=row.id,
            tenant_id=row.tenant_id,
            connector_id=row.connector_id,
            zendesk_ticket_id=row.zendesk_ticket_id,
            result_id=row.result_id,
            upload_token=row.upload_token,
            attachment_id=row.attachment_id,
            put_sent=row.put_sent,
            upload_age=float(row.upload_age),
            attempts=row.attempts,
            lease_token=token,
        )
        for row in rows
    ]


def backoff_seconds(settings: Settings, *, attempts: int) -> float:
    """The wait after `attempts` failed attempts: `zendesk_backoff_seconds[attempts - 1]`, the last repeating."""
    schedule = settings.zendesk_backoff_seconds
    return float(schedule[min(attempts, len(schedule)) - 1]) if schedule else 0.0


class ReplySender:
    """Rounds of replies for one worker process (`run_once`); safe in many processes at once."""

    def __init__(self, sessions: sessionmaker[Session], *, settings: Settings, storage: Storage) -> None:
        self._sessions = sessions
        self._settings = settings
        self._storage = storage
        self._lease_seconds = 3 * 2 * settings.zendesk_timeout_seconds + LEASE_MARGIN_SECONDS

    def run_once(self) -> int:
        """One round: settled swaps move on, then up to `zendesk_concurrency` due replies are attempted, all
        finished before it returns. Returns how many replies were attempted."""
        with unit_of_work(self._sessions) as session:
            advance_settled(session)
        with unit_of_work(self._sessions) as session:
            claims = claim_due(session, limit=self._settings.zendesk_concurrency, lease_seconds=self._lease_seconds)
        if len(claims) == 1:
            self.attempt(claims[0])
        elif claims:
            with ThreadPoolExecutor(len(claims), thread_name_prefix="zendesk-reply") as pool:
                list(pool.map(self.attempt, claims))
        return len(claims)

    # -- one attempt

    def attempt(self, claim: Claim) -> None:
        try:
            self._reply(claim)
        except LeaseLost:
            logger.warning("zendesk ticket %s: the reply's lease was taken over", claim.zendesk_ticket_id)
        except ZendeskError as exc:
            self._failed(claim, detail=exc.detail, retry=exc.retry, retry_after=exc.retry_after, status=exc.status)
        except Final as exc:
            self._failed(claim, detail=exc.detail, retry=False, reason=exc.reason)
        except (CredentialUnreadable, CredentialKeysMissing) as exc:  # a key removed from the settings: retried
            logger.error("zendesk ticket %s: the connector's credentials cannot be opened", claim.zendesk_ticket_id)
            self._failed(claim, detail=f"credentials cannot be opened: {exc}", retry=True)
        except Exception as exc:  # one broken reply must not stop the others; retried like a failure
            logger.exception("zendesk ticket %s: unexpected error while replying", claim.zendesk_ticket_id)
            self._failed(claim, detail=type(exc).__name__, retry=True)

    def _reply(self, claim: Claim) -> None:
        data, content_type = self._result(claim)
        with unit_of_work(self._sessions) as session:
            connector = session.get(ZendeskConnector, claim.connector_id)
            assert connector is not None  # a foreign key
            token = service.api_token(connector, settings=self._settings)
            base_url, email, body = connector.base_url, connector.api_email, connector.reply_body
        with ZendeskClient(base_url=base_url, email=email, token=token, settings=self._settings) as zendesk:
            if (
                claim.put_sent
                and claim.attachment_id is not None
                and zendesk.has_attachment(ticket_id=claim.zendesk_ticket_id, attachment_id=claim.attachment_id)
            ):
                self._posted(claim, attachment_id=claim.attachment_id, confirmed_by="comments")
                return
            upload_token, attachment_id = claim.upload_token, claim.attachment_id
            if upload_token is None or claim.upload_age > UPLOAD_FRESH_SECONDS:
                filename = f"avatar-{claim.zendesk_ticket_id}.{_EXTENSIONS.get(content_type, 'png')}"
                upload = zendesk.upload(filename=filename, data=data, content_type=content_type)
                upload_token, attachment_id = upload.token, upload.attachment_id
                self._record(
                    claim,
                    {"upload_token": upload_token, "attachment_id": attachment_id, "uploaded_at": func.now()},
                    action="zendesk.reply.uploaded",
                    after={"attachment_id": attachment_id, "filename": filename, "size_bytes": len(data)},
                )
            # Recorded before it is sent: if its outcome is lost, the next attempt looks for it first.
            self._record(claim, {"put_sent_at": func.coalesce(ZendeskTicket.put_sent_at, func.now())})
            zendesk.add_comment(ticket_id=claim.zendesk_ticket_id, body=body, upload_token=upload_token)
        self._posted(claim, attachment_id=attachment_id, confirmed_by="response")

    def _result(self, claim: Claim) -> tuple[bytes, str]:
        """The result's bytes and type: from the cache, or copied there from the job that made it."""
        with unit_of_work(self._sessions) as session:
            entry = session.get(ZendeskResult, claim.result_id)
            assert entry is not None  # a foreign key
            job = session.get(Job, entry.job_id) if entry.job_id is not None else None
            status, stored, content_type = entry.status, entry.storage_key, entry.content_type
            digest = bytes(entry.content_hash).hex()
            job_status = None if job is None else job.status
            job_result = None if job is None or job.files_deleted_at is not None else job.result_location
            job_type = None if job is None else job.result_content_type
        if status == ResultStatus.ready.value and stored is not None:
            try:
                return self._storage.get(stored), content_type or "image/png"
            except ObjectMissing:
                self._forget(claim.result_id)
                raise Final("result_missing", "the cached result is gone") from None
        if status == ResultStatus.failed.value or job_status != JobStatus.succeeded.value or job_result is None:
            raise Final("swap_failed", f"the swap did not produce a result (job {job_status or 'missing'})")
        try:
            data = self._storage.get(job_result)
        except ObjectMissing:
            self._forget(claim.result_id)
            raise Final("result_missing", "the job's result is gone") from None
        content_type = job_type or "image/png"
        key = f"integrations/zendesk/{claim.tenant_id}/results/{digest}.{_EXTENSIONS.get(content_type, 'png')}"
        self._storage.put(key, data)
        with unit_of_work(self._sessions) as session:
            session.execute(
                update(ZendeskResult)
                .where(ZendeskResult.id == claim.result_id, ZendeskResult.status == ResultStatus.pending.value)
                .values(
                    status=ResultStatus.ready.value,
                    storage_key=key,
                    content_type=content_type,
                    size_bytes=len(data),
                    ready_at=func.now(),
                )
            )
        return data, content_type

    def _forget(self, result_id: int) -> None:
        """A result whose bytes are gone leaves the cache: the next ticket of its content swaps again."""
        with unit_of_work(self._sessions) as session:
            session.execute(
                update(ZendeskResult)
                .where(ZendeskResult.id == result_id, ZendeskResult.status != ResultStatus.failed.value)
                .values(status=ResultStatus.failed.value, storage_key=None)
            )

    # -- recording, fenced by the lease

    def _record(
        self, claim: Claim, values: dict[str, Any], *, action: str | None = None, after: dict[str, Any] | None = None
    ) -> None:
        with unit_of_work(self._sessions) as session:
            moved = session.execute(
                update(ZendeskTicket)
                .where(
                    ZendeskTicket.id == claim.id,
                    ZendeskTicket.status == TicketStatus.replying.value,
                    ZendeskTicket.lease_token == claim.lease_token,
                )
                .values(**values, updated_at=func.now())
                .returning(ZendeskTicket.id)
            ).scalar_one_or_none()
            if moved is None:
                raise LeaseLost
            if action is not None:
                _audit(
                    session,
                    tenant_id=claim.tenant_id,
                    ticket_id=claim.id,
                    action=action,
                    after={"zendesk_ticket_id": claim.zendesk_ticket_id, "attempt": claim.attempts, **(after or {})},
                )

    def _posted(self, claim: Claim, *, attachment_id: int | None, confirmed_by: str) -> None:
        self._record(
            claim,
            {
                "status": TicketStatus.replied.value,
                "replied_at": func.now(),
                "lease_token": None,
                "next_attempt_at": None,
                "last_error": None,
            },
            action="zendesk.reply.posted",
            after={"attachment_id": attachment_id, "confirmed_by": confirmed_by},
        )
        logger.info("zendesk ticket %s: reply posted", claim.zendesk_ticket_id)

    def _failed(
        self,
        claim: Claim,
        *,
        detail: str,
        retry: bool,
        retry_after: float | None = None,
        status: int | None = None,
        reason: str = "reply_failed",
    ) -> None:
        settings = self._settings
        if retry and claim.attempts < settings.zendesk_max_attempts:
            if retry_after is not None:  # a 429: Zendesk says when
                delay = min(retry_after, settings.zendesk_max_retry_after_seconds)
            else:
                delay = backoff_seconds(settings, attempts=claim.attempts)
            values: dict[str, Any] = {
                "lease_token": None,
                "last_error": detail,
                "next_attempt_at": func.now() + timedelta(seconds=delay),
            }
            action, after = "zendesk.reply.retry", {"error": detail, "status": status, "retry_in_seconds": delay}
            logger.warning(
                "zendesk ticket %s: reply attempt failed (%s); retry in %.1fs", claim.zendesk_ticket_id, detail, delay
            )
        else:
            values = {
                "status": TicketStatus.failed.value,
                "reason": reason,
                "lease_token": None,
                "last_error": detail,
                "next_attempt_at": None,
            }
            action, after = "zendesk.reply.failed", {"error": detail, "status": status, "reason": reason}
            logger.warning("zendesk ticket %s: reply failed: %s", claim.zendesk_ticket_id, detail)
        try:
            self._record(claim, values, action=action, after=after)
        except LeaseLost:
            logger.warning("zendesk ticket %s: the reply's lease was taken over", claim.zendesk_ticket_id)
