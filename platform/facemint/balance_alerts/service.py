"""Low-balance alerts set, read and removed: a user's account (by the user, or by its tenant's admins and staff)
and a tenant's pool (by its admins and staff). Setting one is audited and evaluates it at once; when and how it
fires is `facemint.balance_alerts.evaluation`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from billing.ledger import service as ledger
from facemint.audit import service as audit
from facemint.auth.principal import Principal
from facemint.balance_alerts import evaluation
from facemint.balance_alerts.errors import AlertWithoutTenant, BalanceAlertNotFound
from facemint.balance_alerts.orm import BalanceAlert
from facemint.balance_alerts.schemas import AccountKindName, BalanceAlertRead, BalanceAlertSet
from facemint.context import RequestContext
from facemint.tenants import service as tenant_service
from facemint.users import service as user_service


@dataclass(frozen=True, slots=True)
class AlertTarget:
    """The account an alert watches, and whose it is."""

    account_id: int
    kind: AccountKindName
    tenant_id: int | None
    user_id: int | None  # None for a tenant's pool

    @property
    def audit_target(self) -> tuple[str, int | None]:
        if self.kind == "tenant_pool":
            return "tenant_pool", self.tenant_id
        return "user", self.user_id


def own_account(principal: Principal) -> AlertTarget:
    return AlertTarget(principal.account_id, "user", principal.tenant_id, principal.user_id)


def user_account(session: Session, *, user_id: int, tenant_scope: int | None) -> AlertTarget:
    """A user's account, within the caller's tenant scope (another tenant's user: 404 `user_not_found`)."""
    user = user_service.get(session, user_id=user_id, tenant_scope=tenant_scope)
    return AlertTarget(user.account_id, "user", user.tenant_id, user.id)


def pool_account(session: Session, *, tenant_id: int, tenant_scope: int | None) -> AlertTarget:
    """A tenant's pool, within the caller's tenant scope (another tenant: 404 `tenant_not_found`)."""
    tenant = tenant_service.get(session, tenant_id=tenant_id, tenant_scope=tenant_scope)
    return AlertTarget(tenant.pool_account_id, "tenant_pool", tenant.id, None)


def get(session: Session, *, target: AlertTarget) -> BalanceAlertRead:
    alert = session.scalar(
        select(BalanceAlert)
        .where(BalanceAlert.account_id == target.account_id, BalanceAlert.removed_at.is_(None))
        .execution_options(populate_existing=True)
    )
    if alert is None:
        raise BalanceAlertNotFound("no low-balance alert is set on this account")
    available = ledger.get_balance(session, account_id=target.account_id).available
    return BalanceAlertRead(
        account=target.kind,
        user_id=target.user_id,
        tenant_id=target.tenant_id,
        threshold=alert.threshold,
        hysteresis=alert.hysteresis,
        rearm_at=alert.threshold + alert.hysteresis,
        armed=alert.armed,
        available=available,
        fired_at=alert.fired_at,
        rearmed_at=alert.rearmed_at,
        created_at=alert.created_at,
        updated_at=alert.updated_at,
    )


def set_alert(
    session: Session, *, context: RequestContext | None, target: AlertTarget, data: BalanceAlertSet
) -> BalanceAlertRead:
    """Set (or change) the account's alert, then evaluate it at once. A new alert, or one set again after it was
    removed, starts armed: an account already below the threshold gets its alert now. A changed alert keeps its
    state, so moving the threshold is not a crossing of its own, unless the account is on the other side of the
    new line (armed and below it: fires; disarmed and at the new re-arm level: re-arms). The same settings again
    change nothing. No `context`: a command or a test, audited without an actor."""
    if target.tenant_id is None:
        raise AlertWithoutTenant("alerts are sent to a tenant's events URL; this account belongs to no tenant")
    after = {"threshold": data.threshold, "hysteresis": data.resolved_hysteresis}
    created = session.execute(
        insert(BalanceAlert)
        .values(account_id=target.account_id, **after)
        .on_conflict_do_nothing(index_elements=[BalanceAlert.account_id])
        .returning(BalanceAlert.account_id)
    ).scalar_one_or_none()
    before: dict[str, Any] | None = None
    if created is None:
        # It exists (a concurrent first set waits in the insert above, then lands here).
        alert = session.scalars(
            select(BalanceAlert)
            .where(BalanceAlert.account_id == target.account_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        before = _settings(alert) if alert.removed_at is None else None
        if before == after:
            return get(session, target=target)
        if alert.removed_at is not None:
            alert.armed = True
            alert.removed_at = None
        alert.threshold, alert.hysteresis = after["threshold"], after["hysteresis"]
        alert.updated_at = func.now()
        session.flush()
    evaluation.evaluate_accounts(session, account_ids=[target.account_id])
    target_type, target_id = target.audit_target
    audit.record(
        session,
        context=context,
        action="balance_alert.set",
        target_type=target_type,
        target_id=target_id,
        tenant_id=target.tenant_id,
        before=before,
        after=after,
    )
    return get(session, target=target)


def remove(session: Session, *, context: RequestContext, target: AlertTarget) -> None:
    """Remove the account's alert (its row stays, stamped `removed_at`); nothing set: nothing to do."""
    removed = session.execute(
        update(BalanceAlert)
        .where(BalanceAlert.account_id == target.account_id, BalanceAlert.removed_at.is_(None))
        .values(removed_at=func.now(), updated_at=func.now())
        .returning(BalanceAlert.threshold, BalanceAlert.hysteresis)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if removed is None:
        return
    target_type, target_id = target.audit_target
    audit.record(
        session,
        context=context,
        action="balance_alert.remove",
        target_type=target_type,
        target_id=target_id,
        tenant_id=target.tenant_id,
        before={"threshold": removed.threshold, "hysteresis": removed.hysteresis},
    )


def _settings(alert: BalanceAlert) -> dict[str, Any]:
    return {"threshold": alert.threshold, "hysteresis": alert.hysteresis}
