"""The Zendesk connector's admin API, `/admin/v1/tenants/{tenant_id}/integrations/zendesk`
(`client.admin.zendesk`): the connector, its rules, its image assets and the tickets it handled. The webhook
Zendesk itself calls is not the client's.

Putting the connector or its rules replaces them whole, so both are retried like reads. Uploading an asset takes
no Idempotency-Key: it is retried only when nothing reached the server. A delete whose answer was lost and whose
retry meets `zendesk_asset_not_found` was done by the first attempt."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from facemint_client._convert import from_json
from facemint_client._core import Call, deleted_unless_found, parse_json
from facemint_client._resource import Listing, M, Resource, endpoint, listing, paged
from facemint_client._uploads import FileInput, Upload
from facemint_client.zendesk_models import (
    ZendeskAsset,
    ZendeskAssetPair,
    ZendeskConnector,
    ZendeskRule,
    ZendeskRules,
    ZendeskTicket,
)

AssetKind = Literal["template", "scene"]
TicketStatus = Literal["skipped", "swapping", "replying", "replied", "failed"]
# What the API takes as an asset, recognised by the first bytes when the caller names no type.
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


def _base(tenant_id: int) -> str:
    return f"/admin/v1/tenants/{tenant_id}/integrations/zendesk"


def _fields(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _plain(value: Any) -> dict[str, Any]:
    """A rule or pair as JSON: a model of this package, or a mapping as the API names it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value)


def image_type(data: bytes, upload: Upload) -> str:
    """The image's content type: PNG, JPEG or WebP by its first bytes, else what its file name says."""
    for magic, content_type in _IMAGE_MAGIC:
        if data.startswith(magic):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return upload.content_type


class Zendesk(Resource[M]):
    @endpoint("GET /admin/v1/tenants/{tenant_id}/integrations/zendesk")
    def connector(self, tenant_id: int) -> Call[ZendeskConnector]:
        """The tenant's connector (credentials shown as fingerprints only); `NotFound`
        (`zendesk_connector_not_found`) when it has none."""
        return Call(method="GET", path=_base(tenant_id), parse=parse_json(ZendeskConnector))

    @endpoint("PUT /admin/v1/tenants/{tenant_id}/integrations/zendesk")
    def put_connector(
        self,
        tenant_id: int,
        *,
        api_email: str,
        integration_user_id: int,
        subdomain: str | None = None,
        base_url: str | None = None,
        api_token: str | None = None,
        signing_secret: str | None = None,
        enabled: bool | None = None,
        processors: Sequence[str] | None = None,
        reply_body: str | None = None,
    ) -> Call[ZendeskConnector]:
        """Create or replace the tenant's connector: `subdomain` (`acme` for acme.zendesk.com) or `base_url`, the
        agent the replies come from (`api_email`), the tenant's user whose tokens pay (`integration_user_id`).
        `api_token` is needed the first time, `signing_secret` once Zendesk made it; either is kept when left out
        later, and neither is ever shown again. Settings left out take the API's defaults."""
        body = _fields(
            subdomain=subdomain,
            base_url=base_url,
            api_email=api_email,
            api_token=api_token,
            signing_secret=signing_secret,
            integration_user_id=integration_user_id,
            enabled=enabled,
            processors=None if processors is None else list(processors),
            reply_body=reply_body,
        )
        return Call(
            method="PUT", path=_base(tenant_id), json=body, parse=parse_json(ZendeskConnector), replay_safe=True
        )

    @endpoint("GET /admin/v1/tenants/{tenant_id}/integrations/zendesk/rules")
    def rules(self, tenant_id: int) -> Call[ZendeskRules]:
        return Call(method="GET", path=f"{_base(tenant_id)}/rules", parse=parse_json(ZendeskRules))

    @endpoint("PUT /admin/v1/tenants/{tenant_id}/integrations/zendesk/rules")
    def set_rules(
        self,
        tenant_id: int,
        rules: Sequence[ZendeskRule | Mapping[str, Any]],
        *,
        default: ZendeskAssetPair | Mapping[str, Any] | None = None,
    ) -> Call[ZendeskRules]:
        """Replace the rules (in order: the first a ticket matches wins) and the default (None: a ticket no rule
        matches is skipped). Each names a template and a scene asset by id."""
        body = {"rules": [_plain(rule) for rule in rules], "default": None if default is None else _plain(default)}
        return Call(
            method="PUT", path=f"{_base(tenant_id)}/rules", json=body, parse=parse_json(ZendeskRules), replay_safe=True
        )

    @endpoint("POST /admin/v1/tenants/{tenant_id}/integrations/zendesk/assets")
    def upload_asset(
        self, tenant_id: int, image: FileInput, *, kind: AssetKind, name: str, content_type: str | None = None
    ) -> Call[ZendeskAsset]:
        """Upload a `template` (a face) or a `scene` (where the face goes): a PNG, JPEG or WebP image (a path,
        bytes or a binary file), sent as the body with its type (`content_type`, else recognised)."""
        upload = Upload.of(image, field="image")
        data = upload.read()
        return Call(
            method="POST",
            path=f"{_base(tenant_id)}/assets",
            params={"kind": kind, "name": name},
            content=data,
            headers={"Content-Type": content_type or image_type(data, upload)},
            parse=parse_json(ZendeskAsset),
        )

    @endpoint("GET /admin/v1/tenants/{tenant_id}/integrations/zendesk/assets")
    def assets(self, tenant_id: int) -> Call[list[ZendeskAsset]]:
        """Every asset of the tenant. Not paginated."""
        return Call(
            method="GET",
            path=f"{_base(tenant_id)}/assets",
            parse=lambda response: [from_json(ZendeskAsset, item) for item in response.json()["items"]],
        )

    @endpoint("DELETE /admin/v1/tenants/{tenant_id}/integrations/zendesk/assets/{asset_id}")
    def delete_asset(self, tenant_id: int, asset_id: int) -> Call[None]:
        """Retire an asset no rule or default names (409 `zendesk_asset_in_use` otherwise); its image is deleted."""
        return Call(
            method="DELETE",
            path=f"{_base(tenant_id)}/assets/{asset_id}",
            parse=lambda response: None,
            replay_safe=True,
            recover=deleted_unless_found("zendesk_asset_not_found"),
        )

    @paged("GET /admin/v1/tenants/{tenant_id}/integrations/zendesk/tickets")
    def tickets(
        self, tenant_id: int, *, status: TicketStatus | None = None, limit: int | None = None
    ) -> Listing[ZendeskTicket]:
        """The tickets the webhook delivered, newest first: what each matched, its job, its reply."""
        return listing(f"{_base(tenant_id)}/tickets", ZendeskTicket, limit=limit, status=status)
