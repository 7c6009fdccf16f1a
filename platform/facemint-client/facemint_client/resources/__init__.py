"""The API's resources, each written once for both clients (see `facemint_client._resource`)."""

from __future__ import annotations

from typing import Generic

from facemint_client._resource import Group, M
from facemint_client.resources.abuse import AbuseRules, AbuseTriggers
from facemint_client.resources.account import Account, Auth
from facemint_client.resources.alerts import BalanceAlerts
from facemint_client.resources.directory import ApiKeys, Audit, Prices, Tenants, Users
from facemint_client.resources.grants import Grants
from facemint_client.resources.jobs import Jobs
from facemint_client.resources.money import Approvals, Balances, Recharges
from facemint_client.resources.reports import AdminJobs, Finance, Reports
from facemint_client.resources.zendesk import Zendesk

__all__ = ["Account", "Admin", "Auth", "Jobs"]


class Admin(Group, Generic[M]):
    """The `/admin/v1` API (what ops scripts use): `client.admin.tenants`, `.users`, `.api_keys`, `.recharges`,
    `.approvals`, `.balances`, `.balance_alerts`, `.grants`, `.finance`, `.reports`, `.prices`, `.audit`, `.jobs`,
    `.abuse_rules`, `.abuse_triggers`, `.zendesk`."""

    def __init__(self, runner: object) -> None:
        self.tenants: Tenants[M] = Tenants(runner)
        self.users: Users[M] = Users(runner)
        self.api_keys: ApiKeys[M] = ApiKeys(runner)
        self.recharges: Recharges[M] = Recharges(runner)
        self.approvals: Approvals[M] = Approvals(runner)
        self.balances: Balances[M] = Balances(runner)
        self.grants: Grants[M] = Grants(runner)
        self.finance: Finance[M] = Finance(runner)
        self.reports: Reports[M] = Reports(runner)
        self.prices: Prices[M] = Prices(runner)
        self.audit: Audit[M] = Audit(runner)
        self.jobs: AdminJobs[M] = AdminJobs(runner)
        self.balance_alerts: BalanceAlerts[M] = BalanceAlerts(runner)
        self.abuse_rules: AbuseRules[M] = AbuseRules(runner)
        self.abuse_triggers: AbuseTriggers[M] = AbuseTriggers(runner)
        self.zendesk: Zendesk[M] = Zendesk(runner)
