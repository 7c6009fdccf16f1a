"""Every table of the schema, imported in one place for Alembic and the drift test."""

from billing.grants.orm import GrantAward
from billing.ledger.orm import (
    CreditLot,
    Hold,
    HoldLotAllocation,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    LotConsumption,
    LotEpoch,
)
from billing.pricing.orm import Price
from billing.recharge.orm import RechargeBatch
from billing.reports import orm as rollup_orm  # noqa: F401  (registers the journal's rollup)
from billing.sealing import orm as sealing_orm  # noqa: F401  (registers the sealing tables)
from facemint.abuse.orm import AbuseRule, AbuseTrigger
from facemint.api_keys.orm import ApiKey
from facemint.approvals import orm as approvals_orm  # noqa: F401  (registers the approval tables)
from facemint.audit.orm import AuditEvent
from facemint.balance_alerts.orm import BalanceAlert
from facemint.db import Base
from facemint.grants.orm import CreditGrant, CreditGrantPeriod
from facemint.integrations.zendesk.orm import ZendeskAsset, ZendeskConnector, ZendeskResult, ZendeskTicket
from facemint.jobs.orm import Job
from facemint.reports.orm import ReconciliationRun
from facemint.tenants.orm import Tenant
from facemint.users.orm import User
from facemint.webhooks.orm import WebhookDelivery, WebhookEvent

__all__ = [
    "AbuseRule",
    "AbuseTrigger",
    "ApiKey",
    "AuditEvent",
    "BalanceAlert",
    "Base",
    "CreditGrant",
    "CreditGrantPeriod",
    "CreditLot",
    "Hold",
    "HoldLotAllocation",
    "GrantAward",
    "Job",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerTransaction",
    "LotConsumption",
    "LotEpoch",
    "Price",
    "RechargeBatch",
    "ReconciliationRun",
    "Tenant",
    "User",
    "WebhookDelivery",
    "WebhookEvent",
    "ZendeskAsset",
    "ZendeskConnector",
    "ZendeskResult",
    "ZendeskTicket",
]
