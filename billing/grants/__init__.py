"""Recurring grants' ledger side: a grant's period boundaries, and crediting a staged set of accounts once per
(grant, account, period) with lots that expire at the period's end."""
