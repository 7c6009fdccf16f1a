"""What every console view shares: the signed-in viewer (from the session cookie, as the same Principal the API
builds from a token), the CSRF check on every state-changing request, and rendering templates and problems."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from facemint import log_setup
from facemint.auth import service as auth_service
from facemint.auth.errors import InsufficientScope
from facemint.auth.principal import Principal
from facemint.auth.scopes import Scope
from facemint.config import Environment as RunEnvironment
from facemint.config import Settings
from facemint.console import totp
from facemint.console.errors import (
    ConsoleNotForRole,
    ConsoleSignInRequired,
    CsrfRejected,
    SecondFactorInvalid,
    SecondFactorRequired,
)
from facemint.console.sessions import COOKIE_NAME, ConsoleSession, SessionStore
from facemint.context import RequestContext
from facemint.deps import RedisDep, SessionDep, SettingsDep, request_context
from facemint.errors import FacemintError, Unprocessable
from facemint.ratelimit import RateLimiter
from facemint.users import service as user_service
from facemint.users.orm import Role

ROOT = Path(__file__).resolve().parents[3]
TEMPLATES_DIR = ROOT / "admin_ui" / "templates"
STATIC_DIR = ROOT / "admin_ui" / "static"
CONSOLE_PATH = "/admin"
STATIC_PATH = f"{CONSOLE_PATH}/static"
CONSOLE_ROLES = frozenset({Role.platform_admin, Role.operator, Role.finance, Role.tenant_admin})
# The bulk-recharge upload has the batch route's body limit (facemint.app), not the default 1 MiB.
BULK_UPLOAD_PATH = f"{CONSOLE_PATH}/recharges/bulk/preview"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

templates = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def is_console_path(path: str) -> bool:
    return (path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")) and not path.startswith("/admin/v1")


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def session_store(request: Request) -> SessionStore:
    settings: Settings = request.app.state.settings
    return SessionStore(
        request.app.state.redis,
        idle_seconds=settings.console_idle_seconds,
        absolute_seconds=settings.console_absolute_seconds,
    )


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking at the console: the same Principal an access token would give this user."""

    principal: Principal
    session: ConsoleSession
    session_id: str
    context: RequestContext

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.session.timezone)

    def can(self, *scopes: Scope | str) -> bool:
        return all(Scope(scope) in self.principal.scopes for scope in scopes)

    def require(self, *scopes: Scope) -> None:
        """The same refusal as the API's scope check: 403 `insufficient_scope`."""
        missing = [s.value for s in scopes if s not in self.principal.scopes]
        if missing:
            raise InsufficientScope(f"missing scope: {', '.join(missing)}", missing=missing)


def current_viewer(request: Request, session: SessionDep, settings: SettingsDep, redis: RedisDep) -> Viewer:
    store = session_store(request)
    session_id = request.cookies.get(COOKIE_NAME)
    data = store.load(session_id)
    if data is None or session_id is None:
        raise ConsoleSignInRequired("sign in to use the console")
    try:
        principal = auth_service.principal_for_user(
            session, user_id=data.user_id, credentials_version=data.credentials_version
        )
    except FacemintError:
        # Frozen, suspended, or signed out everywhere (the credentials version moved on): this session is over.
        store.destroy(session_id)
        raise ConsoleSignInRequired("your session has ended; sign in again") from None
    if principal.role not in CONSOLE_ROLES:
        raise ConsoleNotForRole("the console is for platform staff and tenant admins")
    log_setup.bind(tenant_id=principal.tenant_id, user_id=principal.user_id)
    # The same per-principal (and per-tenant) rate limits as the API.
    limiter: RateLimiter = request.app.state.limiter
    plan_limits = settings.plan_limits.get(principal.plan) or settings.plan_limits["free"]
    buckets = [(principal.rate_limit_subject, plan_limits["key"])]
    if principal.tenant_id is not None:
        buckets.append((f"tenant:{principal.tenant_id}", plan_limits["tenant"]))
    limiter.hit(request, buckets)
    request.state.principal = principal
    # Whether the viewer has a second factor is read only by the pages that need it (`has_second_factor`).
    return Viewer(
        principal=principal, session=data, session_id=session_id, context=request_context(request, principal, settings)
    )


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


def _same_origin(request: Request) -> bool:
    """A browser names the page that sent a cross-site post; ours must be this host."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def checked_form(request: Request, viewer: ViewerDep) -> FormData:
    """The body of a state-changing console request, read only after the viewer is known, and only if it carries
    the session's CSRF token (in the `X-CSRF-Token` header that htmx sends, or the form's `csrf_token` field)."""
    if not _same_origin(request):
        raise CsrfRejected("cross-site requests are refused")
    form = await request.form()
    presented = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
    if not isinstance(presented, str) or not hmac.compare_digest(presented, viewer.session.csrf_token):
        raise CsrfRejected("the CSRF token is missing or wrong; reload the page and try again")
    return form


CheckedForm = Annotated[FormData, Depends(checked_form)]


def form_text(form: FormData, name: str, *, default: str = "") -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else default


# --- rendering ------------------------------------------------------------------------------------------------


def localtime(value: datetime | str | None, tz: ZoneInfo, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(tz).strftime(fmt)


def parse_local(value: str | None, tz: ZoneInfo) -> datetime | None:
    """A `datetime-local` input typed in the viewer's zone, as an aware UTC time (None when empty)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Unprocessable(f"not a date and time: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def url_for_page(request: Request, path: str, **params: Any) -> str:
    """A console URL under the app's root path (so the console works behind a sub-path proxy)."""
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items() if v not in (None, ""))
    base = request.scope.get("root_path", "") + path
    return f"{base}?{query}" if query else base


def next_page_url(request: Request, path: str, next_cursor: str | None, **filters: Any) -> str | None:
    """The pager's link to the next keyset page of a console list (`path` without the /admin prefix, as for
    `redirect`), keeping the list's filters; None on the last page."""
    if not next_cursor:
        return None
    return url_for_page(request, CONSOLE_PATH + path, cursor=next_cursor, **filters)


def render(
    request: Request,
    viewer: Viewer | None,
    template: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    tz = viewer.tz if viewer else ZoneInfo("UTC")
    body = templates.get_template(template).render(
        request=request,
        viewer=viewer,
        me=viewer.principal if viewer else None,
        can=viewer.can if viewer else (lambda *_: False),
        csrf_token=viewer.session.csrf_token if viewer else "",
        tz=tz,
        tz_name=tz.key,
        localtime=lambda value, fmt="%Y-%m-%d %H:%M:%S": localtime(value, tz, fmt),
        url=lambda path, **params: url_for_page(request, CONSOLE_PATH + path, **params),
        static=lambda path: request.scope.get("root_path", "") + f"{STATIC_PATH}/{path}",
        htmx=is_htmx(request),
        path=request.url.path,
        **context,
    )
    response = HTMLResponse(body, status_code=status, headers=dict(headers or {}))
    _no_store(response)
    return response


def redirect(request: Request, path: str, **params: Any) -> Response:
    """After a post: an htmx request follows `HX-Redirect`, a plain form the 303."""
    target = url_for_page(request, CONSOLE_PATH + path, **params)
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def _no_store(response: Response) -> None:
    # Console pages carry balances and keys: never cached, never framed.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    response.headers["Referrer-Policy"] = "same-origin"


def problem_page(
    request: Request, *, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None
) -> Response | None:
    """The console's rendering of a problem (the one error handler calls it first): a page or an htmx fragment
    with the same status and code; an ended session goes to the sign-in page. None outside the console."""
    if not is_console_path(request.url.path) or request.url.path.startswith(STATIC_PATH):
        return None
    if body.get("code") == ConsoleSignInRequired.code:
        target = url_for_page(request, CONSOLE_PATH + "/sign-in", next=_safe_next(request))
        if is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": target})
        if request.method == "GET":
            return RedirectResponse(target, status_code=303)
    template = "_problem.html" if is_htmx(request) else "problem.html"
    extra_headers = {k: v for k, v in (headers or {}).items() if k.lower() in ("retry-after", "x-request-id")}
    if is_htmx(request):
        # Errors land in the page's message area, whatever the request meant to swap.
        extra_headers |= {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"}
    return render(request, None, template, status=status, headers=extra_headers, problem=body)


def _safe_next(request: Request) -> str:
    path = request.url.path
    if request.method != "GET" or not path.startswith(CONSOLE_PATH + "/") or path.startswith("//"):
        return ""
    return path + (f"?{request.url.query}" if request.url.query else "")


def safe_next(value: str | None) -> str:
    """Where to go after signing in: only a console path on this site."""
    if value and value.startswith(CONSOLE_PATH + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return CONSOLE_PATH + "/"


def secure_cookies(settings: Settings) -> bool:
    return settings.env is RunEnvironment.prod


def has_second_factor(session: Session, viewer: Viewer) -> bool:
    return user_service.has_totp(session, user_id=viewer.principal.user_id)


def require_second_factor(request: Request, session: Session, viewer: Viewer, code: str) -> None:
    """For the steps that need a current code when the viewer has enrolled a second factor (approving, removing
    the factor): 422 `second_factor_required` without one, 401 `second_factor_invalid` for a wrong or reused one."""
    user = user_service.get(session, user_id=viewer.principal.user_id, tenant_scope=None)
    if not user.totp_secret:
        return
    if not code:
        raise SecondFactorRequired("enter the current code from your authenticator")
    counter = totp.matching_counter(user.totp_secret, code)
    if counter is None or not session_store(request).claim_totp_step(user_id=viewer.principal.user_id, counter=counter):
        raise SecondFactorInvalid("the code is wrong or was already used; wait for the next one")
