from facemint.errors import NotFound, Unprocessable


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
    title = "API key not found"


class ScopeNotAllowed(Unprocessable):
    code = "scope_not_allowed"
    title = "Scope not allowed"


class InvalidExpiry(Unprocessable):
    code = "invalid_expiry"
    title = "Invalid expiry"
