"""What the audit trail records about the request (or command) behind a write. Built by the endpoint layer
(`facemint.deps.request_context`), passed to services, which never see the HTTP request itself."""

from __future__ import annotations

from dataclasses import dataclass

from facemint.auth.principal import Principal


@dataclass(frozen=True, slots=True)
class RequestContext:
    principal: Principal
    request_id: str | None
    ip: str
