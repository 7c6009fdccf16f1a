"""The console's own routes (sign-in, second factor, sign-out, the viewer's account) and `install_console`, which
mounts every screen's router, the static files and the console's rendering of problems."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session

from facemint.auth import service as auth_service
from facemint.auth.signin import check_password, count_failure
from facemint.console import totp
from facemint.console.errors import ConsoleNotForRole, CsrfRejected, SecondFactorInvalid
from facemint.console.sessions import COOKIE_NAME, SIGN_IN_CSRF_COOKIE, SessionStore
from facemint.console.views import (
    api_keys,
    approvals,
    audit,
    dashboard,
    finance,
    jobs,
    prices,
    recharges,
    tenants,
    users,
)
from facemint.console.web import (
    CONSOLE_PATH,
    CONSOLE_ROLES,
    STATIC_DIR,
    STATIC_PATH,
    CheckedForm,
    Viewer,
    ViewerDep,
    form_text,
    has_second_factor,
    problem_page,
    redirect,
    render,
    require_second_factor,
    safe_next,
    secure_cookies,
    session_store,
    zone,
)
from facemint.deps import SessionDep, SettingsDep
from facemint.errors import Unprocessable
from facemint.users import service as user_service
from facemint.users.orm import Role

router = APIRouter(prefix=CONSOLE_PATH, include_in_schema=False)
SCREENS = (dashboard, tenants, users, api_keys, recharges, approvals, jobs, finance, audit, prices)
# Time zones offered in the picker; any IANA name typed in is taken too.
COMMON_ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
)


def _set_session_cookie(response: Response, session_id: str, *, secure: bool, max_age: int) -> None:
    response.set_cookie(
        COOKIE_NAME,
        session_id,
        max_age=max_age,
        path=CONSOLE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
    )


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request, settings: SettingsDep, next: str = "") -> Response:
    token = request.cookies.get(SIGN_IN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, None, "sign_in.html", next=safe_next(next), sign_in_csrf=token, error=None)
    response.set_cookie(
        SIGN_IN_CSRF_COOKIE,
        token,
        path=CONSOLE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(settings),
    )
    return response


async def _sign_in_form(request: Request) -> dict[str, str]:
    """The sign-in form, checked against its double-submit cookie (there is no session yet to hold a token)."""
    form = await request.form()
    expected = request.cookies.get(SIGN_IN_CSRF_COOKIE, "")
    presented = form.get("csrf_token")
    if not expected or not isinstance(presented, str) or not secrets.compare_digest(presented, expected):
        raise CsrfRejected("the sign-in form's CSRF token is missing or wrong; reload the page")
    return {k: v for k, v in form.items() if isinstance(v, str)}


SignInForm = Annotated[dict[str, str], Depends(_sign_in_form)]


def _start_session(
    request: Request, settings: SettingsDep, *, user_id: int, credentials_version: int, next_path: str | None
) -> Response:
    store = session_store(request)
    store.destroy(request.cookies.get(COOKIE_NAME))  # a new id at every sign-in: no session fixation
    session_id, _ = store.create(
        user_id=user_id, credentials_version=credentials_version, timezone=settings.console_default_timezone
    )
    response = RedirectResponse(safe_next(next_path), status_code=303)
    _set_session_cookie(
        response, session_id, secure=secure_cookies(settings), max_age=settings.console_absolute_seconds
    )
    response.delete_cookie(SIGN_IN_CSRF_COOKIE, path=CONSOLE_PATH)
    return response


@router.post("/sign-in")
def sign_in(request: Request, session: SessionDep, settings: SettingsDep, form: SignInForm) -> Response:
    email = form.get("email", "")[:320]
    signed_in = check_password(request, session, settings, email=email, password=form.get("password", "")[:1024])
    if Role(signed_in.role) not in CONSOLE_ROLES:
        raise ConsoleNotForRole("the console is for platform staff and tenant admins; members use the API")
    if signed_in.totp_secret:
        token = session_store(request).start_pending(
            user_id=signed_in.user_id, credentials_version=signed_in.credentials_version, email=email
        )
        return render(request, None, "second_factor.html", pending=token, next=safe_next(form.get("next")), error=None)
    return _start_session(
        request,
        settings,
        user_id=signed_in.user_id,
        credentials_version=signed_in.credentials_version,
        next_path=form.get("next"),
    )


@router.post("/sign-in/second-factor")
def second_factor(request: Request, session: SessionDep, settings: SettingsDep, form: SignInForm) -> Response:
    store: SessionStore = session_store(request)
    pending = store.peek_pending(form.get("pending"))
    if pending is None:
        return RedirectResponse(f"{CONSOLE_PATH}/sign-in", status_code=303)
    user_id, version, email = int(pending["user_id"]), int(pending["credentials_version"]), str(pending["email"])  # type: ignore[call-overload]
    user = user_service.get(session, user_id=user_id, tenant_scope=None)
    counter = totp.matching_counter(user.totp_secret or "", form.get("code", ""))
    if counter is None or not store.claim_totp_step(user_id=user_id, counter=counter):
        count_failure(request, settings, email=email)
        return render(
            request,
            None,
            "second_factor.html",
            status=SecondFactorInvalid.status_code,
            pending=form.get("pending"),
            next=safe_next(form.get("next")),
            error=SecondFactorInvalid.title,
        )
    store.finish_pending(str(form.get("pending")))
    auth_service.principal_for_user(session, user_id=user_id, credentials_version=version)  # still current?
    return _start_session(request, settings, user_id=user_id, credentials_version=version, next_path=form.get("next"))


@router.post("/sign-out")
def sign_out(request: Request, viewer: ViewerDep, form: CheckedForm) -> Response:
    session_store(request).destroy(viewer.session_id)
    response = RedirectResponse(f"{CONSOLE_PATH}/sign-in", status_code=303)
    response.delete_cookie(COOKIE_NAME, path=CONSOLE_PATH)
    return response


@router.get("", include_in_schema=False)
async def console_root() -> Response:
    return RedirectResponse(f"{CONSOLE_PATH}/", status_code=307)


def _account(
    request: Request,
    session: Session,
    viewer: Viewer,
    *,
    enrolling: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    """The account page; `enrolling`: a second factor's secret shown for enrolment (with its QR code)."""
    enrolment = None
    if enrolling:
        uri = totp.provisioning_uri(enrolling, account=viewer.principal.email)
        enrolment = {"secret": enrolling, "uri": uri, "qr_svg": totp.qr_svg(uri)}
    return render(
        request,
        viewer,
        "account.html",
        status=status,
        zones=COMMON_ZONES,
        has_totp=has_second_factor(session, viewer),
        enrolment=enrolment,
        error=error,
    )


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, session: SessionDep, viewer: ViewerDep) -> Response:
    return _account(request, session, viewer)


@router.post("/account/timezone")
def set_timezone(request: Request, viewer: ViewerDep, form: CheckedForm) -> Response:
    name = form_text(form, "timezone")[:64]
    if zone(name).key != name:
        raise Unprocessable(f"unknown time zone: {name!r}")
    session_store(request).update(viewer.session_id, viewer.session, timezone=name)
    return redirect(request, "/account")


@router.post("/account/totp/start", response_class=HTMLResponse)
def start_totp(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm) -> Response:
    secret = totp.new_secret()
    session_store(request).update(viewer.session_id, viewer.session, pending_totp_secret=secret)
    return _account(request, session, viewer, enrolling=secret)


@router.post("/account/totp/confirm")
def confirm_totp(
    request: Request, session: SessionDep, settings: SettingsDep, viewer: ViewerDep, form: CheckedForm
) -> Response:
    secret = viewer.session.pending_totp_secret
    if not secret:
        return redirect(request, "/account")
    counter = totp.matching_counter(secret, form_text(form, "code"))
    store = session_store(request)
    if counter is None or not store.claim_totp_step(user_id=viewer.principal.user_id, counter=counter):
        return _account(
            request,
            session,
            viewer,
            enrolling=secret,
            status=SecondFactorInvalid.status_code,
            error="That code does not match: check your authenticator's clock and try the next code.",
        )
    user = user_service.get(session, user_id=viewer.principal.user_id, tenant_scope=None)
    user_service.set_totp(session, context=viewer.context, user=user, secret=secret)
    store.update(viewer.session_id, viewer.session, pending_totp_secret=None)
    return redirect(request, "/account", enrolled="1")


@router.post("/account/totp/remove")
def remove_totp(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedForm) -> Response:
    require_second_factor(request, session, viewer, form_text(form, "code"))
    user = user_service.get(session, user_id=viewer.principal.user_id, tenant_scope=None)
    user_service.set_totp(session, context=viewer.context, user=user, secret=None)
    return redirect(request, "/account")


def install_console(app: FastAPI) -> None:
    app.state.problem_page = problem_page
    app.include_router(router)
    for screen in SCREENS:
        app.include_router(screen.router, prefix=CONSOLE_PATH, include_in_schema=False)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="console_static")
