"""Recharges: single credits and set-based batches of up to 100,000 rows."""
