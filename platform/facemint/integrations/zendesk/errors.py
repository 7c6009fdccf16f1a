from __future__ import annotations

from facemint.errors import (
    Conflict,
    FacemintError,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
    UnsupportedMediaType,
)


class ConnectorNotFound(NotFound):
    code = "zendesk_connector_not_found"
    title = "Zendesk connector not found"


class AssetNotFound(NotFound):
    code = "zendesk_asset_not_found"
    title = "Zendesk asset not found"


class InvalidConnector(Unprocessable):
    """A connector setting refused: a base URL that is not allowed, an integration user outside the tenant."""

    code = "invalid_zendesk_connector"
    title = "Invalid Zendesk connector"


class InvalidRules(Unprocessable):
    code = "invalid_zendesk_rules"
    title = "Invalid Zendesk rules"


class InvalidAsset(Unprocessable):
    code = "invalid_zendesk_asset"
    title = "Invalid Zendesk asset"


class UnsupportedAssetType(UnsupportedMediaType):
    code = "unsupported_asset_type"
    title = "Unsupported asset type"


class AssetInUse(Conflict):
    code = "zendesk_asset_in_use"
    title = "Zendesk asset in use"


class TooManyAssets(Conflict):
    code = "too_many_zendesk_assets"
    title = "Too many Zendesk assets"


class InvalidWebhookSignature(FacemintError):
    """A webhook without Zendesk's valid, fresh signature (or for no connector): nothing runs."""

    status_code = 401
    code = "invalid_webhook_signature"
    title = "Invalid webhook signature"


class InvalidTicketEvent(Unprocessable):
    code = "invalid_ticket_event"
    title = "Invalid ticket event"


class ConnectorUnavailable(ServiceUnavailable):
    """The connector's credentials cannot be opened (their key is not configured): Zendesk retries a 503."""

    code = "zendesk_connector_unavailable"
    title = "Zendesk connector unavailable"
