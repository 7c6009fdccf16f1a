from __future__ import annotations

from facemint.errors import Forbidden, NotFound, Unauthorized, Unprocessable


class ConsoleSignInRequired(Unauthorized):
    """No console session, or one that ended: pages answer with a redirect to the sign-in page."""

    code = "console_sign_in_required"
    title = "Sign in to the console"


class ConsoleNotForRole(Forbidden):
    code = "console_not_for_role"
    title = "The console is for staff and tenant admins"


class CsrfRejected(Forbidden):
    code = "csrf_rejected"
    title = "The form's CSRF token is missing or wrong"


class SecondFactorRequired(Unprocessable):
    code = "second_factor_required"
    title = "A current code from your authenticator is required"


class SecondFactorInvalid(Unauthorized):
    code = "second_factor_invalid"
    title = "The code from your authenticator is wrong or was already used"


class PreviewNotFound(NotFound):
    code = "preview_not_found"
    title = "Bulk recharge preview not found"
