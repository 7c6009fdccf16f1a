"""Reports over the ledger: reconciliation (and, later, finance views)."""
