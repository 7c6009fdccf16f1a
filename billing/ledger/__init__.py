"""Double-entry token ledger: accounts, transactions, entries and two-phase holds."""
