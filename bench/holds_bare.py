"""The database's own limit for a hold's lifecycle, measured beside the real one (bench/holds.py) in the same run:
reserve and capture as two bare statements and two commits over psycopg2, on a minimal schema of their own
(accounts, holds, entries; no triggers, no idempotency rows, no journal transactions, no usage-revenue leg).
Whatever the real path costs above this is what its rules, its layers and its round trips cost."""

from __future__ import annotations

import random
import threading
import time

import psycopg2

SCHEMA = "bench_bare"

_CREATE = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.accounts (
    id bigint PRIMARY KEY, balance bigint NOT NULL, held bigint NOT NULL DEFAULT 0, CHECK (balance - held >= 0));
CREATE TABLE {SCHEMA}.holds (
    id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES {SCHEMA}.accounts (id), amount bigint NOT NULL,
    status text NOT NULL DEFAULT 'held');
CREATE TABLE {SCHEMA}.entries (
    id bigserial PRIMARY KEY, hold_id bigint NOT NULL REFERENCES {SCHEMA}.holds (id),
    account_id bigint NOT NULL REFERENCES {SCHEMA}.accounts (id), amount bigint NOT NULL);
CREATE INDEX ON {SCHEMA}.entries (account_id);
"""

RESERVE = f"""
WITH hold AS (INSERT INTO {SCHEMA}.holds (account_id, amount) VALUES (%(account)s, %(amount)s) RETURNING id, amount)
UPDATE {SCHEMA}.accounts a SET held = a.held + hold.amount FROM hold
WHERE a.id = %(account)s AND a.balance - a.held >= hold.amount
RETURNING hold.id
"""

CAPTURE = f"""
WITH hold AS (
    UPDATE {SCHEMA}.holds SET status = 'captured' WHERE id = %(hold)s AND status = 'held'
    RETURNING id, account_id, amount),
debited AS (
    UPDATE {SCHEMA}.accounts a SET balance = a.balance - hold.amount, held = a.held - hold.amount
    FROM hold WHERE a.id = hold.account_id RETURNING a.id)
INSERT INTO {SCHEMA}.entries (hold_id, account_id, amount) SELECT hold.id, hold.account_id, -hold.amount FROM hold
RETURNING id
"""


def create(dsn: str, accounts: list[int], balance: int) -> None:
    """The bare schema, with the same account ids as the real run (so both pick the same way)."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(_CREATE)
        cur.execute(f"INSERT INTO {SCHEMA}.accounts (id, balance) SELECT unnest(%s::bigint[]), %s", (accounts, balance))
    conn.close()


def drop(dsn: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    conn.close()


def worker(
    dsn: str,
    accounts: list[int],
    tag: str,
    start: threading.Barrier,
    window: list[float],
    stop: threading.Event,
    out: dict,
) -> None:
    """Same loop shape as bench/holds.py's worker: reserve, commit, capture, commit."""
    rng = random.Random(tag)
    latencies: list[float] = []
    cycles = 0
    conn = psycopg2.connect(dsn)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        conn.commit()
        start.wait(timeout=60)
        while not stop.is_set():
            begun = time.perf_counter()
            cur.execute(RESERVE, {"account": rng.choice(accounts), "amount": 1})
            (hold_id,) = cur.fetchone()
            conn.commit()
            cur.execute(CAPTURE, {"hold": hold_id})
            cur.fetchone()
            conn.commit()
            ended = time.perf_counter()
            if window[0] <= ended <= window[1]:
                cycles += 1
                latencies.append(ended - begun)
    finally:
        conn.close()
    out.update(cycles=cycles, retries=0, latencies=latencies)
