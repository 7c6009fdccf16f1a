"""Zendesk's API, as the reply needs it: upload an image, add a public comment carrying it to a ticket, and look
among a ticket's comments for an attachment (so a reply whose outcome was lost is not posted twice).

Where it may call (SSRF): only `https://<subdomain>.zendesk.com`, checked when a connector is saved and again
before every call, or a base URL the settings list exactly (`zendesk_allowed_base_urls`, a test aid refused in
prod). Redirects are never followed, and proxies and .netrc from the environment are never used.

Every failure is a `ZendeskError` that says whether to try again: a 429 (after its Retry-After), a 408, 409 or
5xx, or no answer at all (a timeout, a refused connection) are retried; any other answer is final (bad
credentials, a ticket that does not exist, a redirect)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from facemint.config import Settings
from facemint.integrations.zendesk.errors import InvalidConnector

USER_AGENT = "Facemint-Zendesk/1"
_ZENDESK_BASE = re.compile(r"^https://[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.zendesk\.com$")
_RETRIED = {408, 409, 429}
MAX_ERROR_LENGTH = 300


def _allowed_bases(settings: Settings) -> set[str]:
    return {base.rstrip("/") for base in settings.zendesk_allowed_base_urls}


def base_url_for(*, subdomain: str | None, base_url: str | None, settings: Settings) -> str:
    """The connector's API base: https://<subdomain>.zendesk.com, or a base URL the settings allow."""
    if subdomain is not None:
        return f"https://{subdomain}.zendesk.com"
    candidate = (base_url or "").strip().rstrip("/")
    if _ZENDESK_BASE.match(candidate) or candidate in _allowed_bases(settings):
        return candidate
    raise InvalidConnector(
        "`base_url` must be https://<subdomain>.zendesk.com (or a base URL this deployment allows)", field="base_url"
    )


def ensure_allowed(base_url: str, settings: Settings) -> None:
    """Checked before every call: a base URL the settings stopped allowing is not called."""
    if not (_ZENDESK_BASE.match(base_url) or base_url in _allowed_bases(settings)):
        raise ZendeskError(f"the base URL {base_url} is not allowed any more", retry=False)


class ZendeskError(Exception):
    def __init__(
        self, detail: str, *, retry: bool, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail[:MAX_ERROR_LENGTH]
        self.retry = retry
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Upload:
    token: str
    attachment_id: int | None


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


class ZendeskClient:
    """One connector's API, authenticated as `{email}/token` with its API token (HTTP Basic)."""

    def __init__(self, *, base_url: str, email: str, token: str, settings: Settings) -> None:
        ensure_allowed(base_url, settings)
        self._client = httpx.Client(
            base_url=base_url,
            auth=httpx.BasicAuth(f"{email}/token", token),
            timeout=settings.zendesk_timeout_seconds,
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": USER_AGENT, "accept": "application/json"},
        )

    def __enter__(self) -> ZendeskClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._client.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ZendeskError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, retry=True) from exc
        status = response.status_code
        if 200 <= status < 300:
            try:
                return response.json()
            except ValueError as exc:
                raise ZendeskError(f"HTTP {status} with a body that is not JSON", retry=True, status=status) from exc
        detail = f"HTTP {status}"
        if response.is_redirect:
            detail += f" (redirects are not followed: Location {response.headers.get('location', '')})"
        raise ZendeskError(
            detail,
            retry=status in _RETRIED or status >= 500,
            status=status,
            retry_after=retry_after_seconds(response.headers.get("retry-after")) if status == 429 else None,
        )

    def upload(self, *, filename: str, data: bytes, content_type: str) -> Upload:
        """POST /api/v2/uploads: the image, to attach to a comment by its token."""
        body = self._send(
            "POST",
            "/api/v2/uploads",
            params={"filename": filename},
            content=data,
            headers={"content-type": content_type},
        )
        upload = body.get("upload") if isinstance(body, dict) else None
        if not isinstance(upload, dict) or not isinstance(upload.get("token"), str) or not upload["token"]:
            raise ZendeskError("the upload's answer has no token", retry=True)
        token: str = upload["token"]
        attachments = upload.get("attachments")
        attachment = upload.get("attachment") or (
            attachments[0] if isinstance(attachments, list) and attachments else None
        )
        attachment_id = attachment.get("id") if isinstance(attachment, dict) else None
        return Upload(token=token, attachment_id=attachment_id if isinstance(attachment_id, int) else None)

    def add_comment(self, *, ticket_id: int, body: str, upload_token: str) -> None:
        """PUT /api/v2/tickets/{id}: a public comment with the upload attached."""
        comment = {"body": body, "uploads": [upload_token], "public": True}
        self._send("PUT", f"/api/v2/tickets/{ticket_id}", json={"ticket": {"comment": comment}})

    def has_attachment(self, *, ticket_id: int, attachment_id: int) -> bool:
        """Whether one of the ticket's newest comments carries the attachment (the first page, newest first: a
        reply we may have posted is among the latest)."""
        body = self._send("GET", f"/api/v2/tickets/{ticket_id}/comments", params={"sort_order": "desc"})
        comments = body.get("comments") if isinstance(body, dict) else None
        for comment in comments if isinstance(comments, list) else []:
            attachments = comment.get("attachments") if isinstance(comment, dict) else None
            for attachment in attachments if isinstance(attachments, list) else []:
                if isinstance(attachment, dict) and attachment.get("id") == attachment_id:
                    return True
        return False
