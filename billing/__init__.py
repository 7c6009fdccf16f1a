"""Billing: the token ledger, holds, recharge, reports. Never imports the service or the engine."""
