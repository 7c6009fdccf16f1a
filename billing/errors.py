"""Billing's errors. They carry the same contract as the service's errors (status, code, title, detail,
extra) so the service's one handler renders them; billing cannot import the service to share a base."""

from __future__ import annotations

from typing import Any


class BillingError(Exception):
    status_code = 400
    code = "billing_error"
    title = "Billing error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class AccountNotFound(BillingError):
    status_code = 404
    code = "account_not_found"
    title = "Account not found"


class InsufficientTokens(BillingError):
    status_code = 402
    code = "insufficient_tokens"
    title = "Not enough tokens"


class InvalidAmount(BillingError):
    status_code = 422
    code = "invalid_amount"
    title = "Invalid amount"


class IdempotencyConflict(BillingError):
    status_code = 409
    code = "idempotency_key_reused"
    title = "Idempotency key reused with a different request"


class HoldNotFound(BillingError):
    status_code = 404
    code = "hold_not_found"
    title = "Hold not found"


class HoldAlreadyResolved(BillingError):
    status_code = 409
    code = "hold_already_resolved"
    title = "Hold already resolved"


class TransactionNotFound(BillingError):
    status_code = 404
    code = "transaction_not_found"
    title = "Transaction not found"


class AlreadyReversed(BillingError):
    status_code = 409
    code = "already_reversed"
    title = "Transaction already reversed"


class NotReversible(BillingError):
    status_code = 422
    code = "not_reversible"
    title = "Transaction cannot be reversed"


class LedgerContention(BillingError):
    status_code = 409
    code = "ledger_contention"
    title = "Concurrent update, retry with the same idempotency key"


class PriceNotFound(BillingError):
    status_code = 404
    code = "price_not_found"
    title = "No price for this operation"


class InvalidLotTerms(BillingError):
    status_code = 422
    code = "invalid_lot_terms"
    title = "Invalid credit lot terms"


class LedgerInconsistent(BillingError):
    """The ledger's own records disagree (lots with the balance they should add up to): nothing is written, and the
    reconciliation says where."""

    status_code = 500
    code = "ledger_inconsistent"
    title = "Ledger records disagree"
