"""The workers' recurring grants scheduler: every `grant_interval_seconds`, each grant in force gets its current
period granted to every eligible account that lacks it (`facemint.grants.issuing`), one transaction per chunk.
Safe in many workers at once: a grant another worker is granting is skipped this round, and the database refuses
any second award of a (grant, period, account)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from facemint.db import unit_of_work
from facemint.grants import issuing

logger = logging.getLogger("facemint.grants")


@dataclass
class GrantReport:
    granted_accounts: int = 0
    granted_tokens: int = 0
    transactions: int = 0
    short: list[int] = field(default_factory=list)  # pool-funded grants whose pool could not pay this round
    busy: list[int] = field(default_factory=list)  # grants another runner held
    failed: list[int] = field(default_factory=list)  # grants whose chunk failed (retried next round)


def grant_once(sessions: sessionmaker[Session], *, chunk_size: int) -> GrantReport:
    report = GrantReport()
    with unit_of_work(sessions) as session:
        due = issuing.due_grants(session)
    for grant_id in due:
        after: int | None = None
        while True:
            try:
                with unit_of_work(sessions) as session:
                    outcome = issuing.issue_chunk(session, grant_id=grant_id, limit=chunk_size, after_account_id=after)
            except Exception:  # one grant's failure (a deadlock, a lost race) never holds up the others
                logger.warning("grant %d: a chunk failed; retrying next round", grant_id, exc_info=True)
                report.failed.append(grant_id)
                break
            report.granted_accounts += outcome.granted_accounts
            report.granted_tokens += outcome.granted_tokens
            report.transactions += outcome.transaction_id is not None
            if outcome.busy:
                report.busy.append(grant_id)
            if outcome.shortfall is not None:
                logger.warning(
                    "grant %d: the tenant's pool cannot pay %d tokens; retrying next round", grant_id, outcome.shortfall
                )
                report.short.append(grant_id)
            if not outcome.more:
                break
            after = outcome.last_account_id
    if report.granted_accounts:
        logger.info(
            "granted %d tokens to %d accounts in %d transactions",
            report.granted_tokens,
            report.granted_accounts,
            report.transactions,
        )
    return report
