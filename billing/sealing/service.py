"""Sealed books: hash finished ledger entries and audit events in batches and chain the batch digests, without
taking a lock the write path could wait on.

Boundary. Every sealed row carries `xid`, the id of the transaction that wrote it. In one statement the sealer
takes `x = pg_snapshot_xmin(pg_current_snapshot())`: every transaction below x has finished, and no row can ever
again get an xid below x, so the rows with xid < x are final. A stream is sealed in (xid, id) order: a batch is the
next at most `max_rows` final rows after the previous batch's last position, and records its first and last
position, (xid_from, first_id) and (xid_to, last_id). The batch's row set is therefore exactly "every row whose
(xid, id) lies between those two positions", which `verify` recomputes. A transaction still open while sealing
runs is not in that set; it is sealed by a later batch once it has committed.

Hashes (all sha256, computed in SQL):
- leaf = sha256(UTF-8 of the row's canonical text: every column in a fixed order, each as `quote_nullable` of
  an explicit text form (timestamps in UTC with microseconds), joined by ',' so NULL and 'NULL' differ);
- batch_root = sha256(the batch's leaves concatenated in id order);
- hash = sha256(prev_hash || batch_root || UTF-8 of 'stream|seq|xid_from|first_id|xid_to|last_id|n_rows'),
  prev_hash of a stream's first seal being 32 zero bytes.
Each leaf is also kept (`ledger_seal_leaves`) so `verify` can name the rows that changed.

The ledger stream's batches also feed the journal's rollup (billing.reports.rollup): the sealing statement adds
the batch's sums to `ledger_rollups`, so the rollup always equals the sealed prefix of the journal.

Concurrency: sealers take one transaction-scoped advisory lock, so they queue behind each other (no forks; the
unique (stream, seq) would refuse one anyway); writers never touch the seal tables and take no lock the sealer
holds. Run the sealer in READ COMMITTED (each statement must see the seals committed by the sealer before it).

The chain proves nothing against someone who can rewrite the rows, the leaves and every seal: export
`latest_digest` outside the database and pass it back to `verify` as an anchor."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.reports import rollup
from billing.sealing.orm import STREAMS
from billing.sealing.schemas import RowChange, SealProblem, SealResult, StreamDigest, VerifyReport

GENESIS = bytes(32)
DIGEST_FORMAT = "facemint-seal-digest/1"
# pg_advisory_xact_lock key the sealers share ("seal" in ASCII).
SEALER_LOCK = 0x7365616C
# A backlog larger than this many batches is left for the next run (seal_all is one transaction).
MAX_BATCHES_PER_RUN = 1_000


def _utc(column: str) -> str:
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


@dataclass(frozen=True, slots=True)
class Stream:
    table: str
    # The row's business columns as text expressions, in the canonical order (xid last).
    columns: tuple[str, ...]
    # Work on each sealed batch in the sealing statement itself (so on exactly its rows, committed with its
    # seal): the columns it reads from the batch, and a data-modifying statement over the relation `batch`.
    carried: tuple[str, ...] = ()
    on_batch: str | None = None

    def leaf(self, alias: str) -> str:
        parts = ", ".join(f"quote_nullable({c.format(r=alias)})" for c in self.columns)
        return f"sha256(convert_to(concat_ws(',', {parts}), 'UTF8'))"


_STREAMS: dict[str, Stream] = {
    "ledger_entries": Stream(
        "ledger_entries",
        (
            "{r}.id::text",
            "{r}.transaction_id::text",
            "{r}.account_id::text",
            "{r}.amount::text",
            "{r}.balance_after::text",
            "{r}.row_no::text",
            "{r}.reference",
            _utc("{r}.created_at"),
            "{r}.xid::text",
        ),
        # The journal's rollup follows the seals (billing.reports.rollup).
        carried=rollup.BATCH_COLUMNS,
        on_batch=rollup.upsert_sql("batch"),
    ),
    "audit_events": Stream(
        "audit_events",
        (
            "{r}.id::text",
            _utc("{r}.occurred_at"),
            "{r}.actor_user_id::text",
            "{r}.actor_api_key_id::text",
            "{r}.tenant_id::text",
            "{r}.action",
            "{r}.target_type",
            "{r}.target_id",
            "{r}.request_id",
            "{r}.ip::text",
            "{r}.before::text",  # jsonb's text form is canonical (sorted keys, fixed spacing)
            "{r}.after::text",
            "{r}.xid::text",
        ),
    ),
}
if tuple(_STREAMS) != STREAMS:  # the ORM's CHECK lists the same streams
    raise RuntimeError("billing.sealing: stream lists disagree")

_HEADER = (
    "convert_to(concat_ws('|', {s}.stream, {s}.seq, {s}.xid_from, {s}.first_id, {s}.xid_to, {s}.last_id, {s}.n_rows),"
    " 'UTF8')"
)


def _stream(stream: str) -> Stream:
    try:
        return _STREAMS[stream]
    except KeyError:
        raise ValueError(f"unknown stream {stream!r}; one of {', '.join(STREAMS)}") from None


def _seal_sql(s: Stream) -> str:
    carried = "".join(f", r.{column}" for column in s.carried)
    on_batch = f",\n    on_batch AS ({s.on_batch})" if s.on_batch else ""
    return f"""
    WITH batch AS (
        SELECT r.id, r.xid, {s.leaf("r")} AS leaf{carried}
        FROM {s.table} r
        WHERE (r.xid, r.id) > (CAST(:after_xid AS xid8), :after_id)
          AND r.xid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY r.xid, r.id
        LIMIT :max_rows
    ),
    agg AS (SELECT count(*) AS n_rows, sha256(string_agg(leaf, ''::bytea ORDER BY id)) AS batch_root FROM batch),
    first_row AS (SELECT xid, id FROM batch ORDER BY xid, id LIMIT 1),
    last_row AS (SELECT xid, id FROM batch ORDER BY xid DESC, id DESC LIMIT 1),
    header AS (
        SELECT CAST(:stream AS text) AS stream, CAST(:seq AS bigint) AS seq, f.xid AS xid_from, f.id AS first_id,
               l.xid AS xid_to, l.id AS last_id, a.n_rows, a.batch_root
        FROM agg a CROSS JOIN first_row f CROSS JOIN last_row l
    ),
    seal AS (
        INSERT INTO ledger_seals
            (stream, seq, xid_from, first_id, xid_to, last_id, n_rows, batch_root, prev_hash, hash)
        SELECT h.stream, h.seq, h.xid_from, h.first_id, h.xid_to, h.last_id, h.n_rows, h.batch_root, :prev_hash,
               sha256(CAST(:prev_hash AS bytea) || h.batch_root || {_HEADER.format(s="h")})
        FROM header h
        RETURNING seq, n_rows, xid_from::text AS xid_from, first_id, xid_to::text AS xid_to, last_id, batch_root,
                  prev_hash, hash
    ),
    leaves AS (
        INSERT INTO ledger_seal_leaves (stream, row_id, seq, leaf) SELECT :stream, id, :seq, leaf FROM batch
    ){on_batch}
    SELECT * FROM seal
    """


def _check_read_committed(session: Session) -> None:
    level = session.execute(text("SELECT current_setting('transaction_isolation')")).scalar_one()
    if level != "read committed":
        raise RuntimeError(f"the sealer must run in READ COMMITTED, not {level}")


def _lock(session: Session, *, wait: bool) -> bool:
    """Take the sealers' lock for this transaction (False: `wait=False` and another sealer holds it). Sealers
    queue here; the statements after it see whatever the previous sealer committed."""
    _check_read_committed(session)
    if wait:
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEALER_LOCK})
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SEALER_LOCK}).scalar_one())


_LAST_SEAL_SQL = text(
    "SELECT seq, hash, xid_to::text AS xid_to, last_id FROM ledger_seals WHERE stream = :stream "
    "ORDER BY seq DESC LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class _Head:
    """Where a stream's chain ends: its last seal (seq 0 and the genesis hash before the first)."""

    seq: int = 0
    hash: bytes = GENESIS
    xid_to: str = "0"
    last_id: int = 0


def _head(session: Session, stream: str) -> _Head:
    row = session.execute(_LAST_SEAL_SQL, {"stream": stream}).one_or_none()
    return _Head() if row is None else _Head(row.seq, bytes(row.hash), row.xid_to, row.last_id)


def _seal_after(session: Session, s: Stream, stream: str, head: _Head, *, max_rows: int) -> SealResult | None:
    params = {
        "stream": stream,
        "seq": head.seq + 1,
        "prev_hash": head.hash,
        "after_xid": head.xid_to,
        "after_id": head.last_id,
        "max_rows": max_rows,
    }
    row = session.execute(text(_seal_sql(s)), params).one_or_none()
    if row is None:
        return None
    return SealResult(
        stream=stream,
        seq=row.seq,
        n_rows=row.n_rows,
        xid_from=row.xid_from,
        first_id=row.first_id,
        xid_to=row.xid_to,
        last_id=row.last_id,
        batch_root=bytes(row.batch_root),
        prev_hash=bytes(row.prev_hash),
        hash=bytes(row.hash),
    )


def _check_max_rows(max_rows: int) -> None:
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")


def seal(session: Session, *, stream: str, max_rows: int, wait: bool = True) -> SealResult | None:
    """Seal the next batch of `stream` (at most `max_rows` finished rows); None when there is nothing new (or,
    with `wait=False`, when another sealer is at work). Never commits: the caller's boundary does."""
    s = _stream(stream)
    _check_max_rows(max_rows)
    if not _lock(session, wait=wait):
        return None
    return _seal_after(session, s, stream, _head(session, stream), max_rows=max_rows)


def seal_all(
    session: Session,
    *,
    max_rows: int,
    streams: Iterable[str] = STREAMS,
    max_batches: int = MAX_BATCHES_PER_RUN,
    wait: bool = True,
) -> list[SealResult]:
    """Seal every stream until it is caught up with the finished transactions (at most `max_batches` batches per
    stream; the rest waits for the next run). `wait=False` (periodic sealers in several workers): return [] at
    once when another sealer holds the lock instead of queueing behind it.

    The lock is taken once and held to the end of the transaction, so no other sealer can extend a chain
    meanwhile: each batch follows the one just sealed without reading the chain's head again."""
    chosen = [(stream, _stream(stream)) for stream in streams]
    _check_max_rows(max_rows)
    results: list[SealResult] = []
    if not _lock(session, wait=wait):
        return results
    for stream, s in chosen:
        head = _head(session, stream)
        for _ in range(max_batches):
            result = _seal_after(session, s, stream, head, max_rows=max_rows)
            if result is None:
                break
            results.append(result)
            if result.n_rows < max_rows:
                break
            head = _Head(result.seq, result.hash, result.xid_to, result.last_id)
    return results


# --- verification ----------------------------------------------------------------------------------------

_CHAIN_SQL = f"""
SELECT s.stream, s.seq, s.hash,
       s.seq = coalesce(lag(s.seq) OVER w, 0) + 1 AS seq_ok,
       s.prev_hash = coalesce(lag(s.hash) OVER w, CAST(:genesis AS bytea)) AS link_ok,
       s.hash = sha256(s.prev_hash || s.batch_root || {_HEADER.format(s="s")}) AS hash_ok,
       (s.xid_from, s.first_id) <= (s.xid_to, s.last_id) AS range_ok,
       (s.xid_from, s.first_id) > (coalesce(lag(s.xid_to) OVER w, '0'::xid8), coalesce(lag(s.last_id) OVER w, 0))
           AS order_ok
FROM ledger_seals s
WHERE s.stream = :stream AND s.seq <= :max_seq
WINDOW w AS (PARTITION BY s.stream ORDER BY s.seq)
ORDER BY s.seq
"""

_ROOTS_SQL = """
SELECT coalesce(s.seq, l.seq) AS seq, s.n_rows, l.n AS n_leaves,
       s.seq IS NOT NULL AND l.root IS NOT DISTINCT FROM s.batch_root AS root_ok
FROM (SELECT seq, n_rows, batch_root FROM ledger_seals WHERE stream = :stream AND seq <= :max_seq) s
FULL JOIN (
    SELECT seq, count(*) AS n, sha256(string_agg(leaf, ''::bytea ORDER BY row_id)) AS root
    FROM ledger_seal_leaves WHERE stream = :stream AND seq <= :max_seq GROUP BY seq
) l ON l.seq = s.seq
WHERE s.seq IS NULL OR l.seq IS NULL OR l.n <> s.n_rows OR l.root <> s.batch_root
ORDER BY 1
"""


def _rows_sql(s: Stream) -> str:
    # Every row against every leaf, by id. The leaf is recomputed only for rows that have one.
    return f"""
    SELECT kind, id, n FROM (
        SELECT kind, id, count(*) OVER (PARTITION BY kind) AS n, row_number() OVER (PARTITION BY kind ORDER BY id) AS k
        FROM (
        SELECT CASE
                   WHEN r.id IS NULL THEN 'deleted'
                   WHEN l.row_id IS NULL THEN 'inserted'
                   ELSE 'modified'
               END AS kind,
               coalesce(r.id, l.row_id) AS id
        FROM {s.table} r
        FULL JOIN (SELECT row_id, leaf FROM ledger_seal_leaves WHERE stream = :stream AND seq <= :max_seq) l
               ON l.row_id = r.id
        WHERE r.id IS NULL
           OR (l.row_id IS NULL AND (r.xid, r.id) <= (CAST(:last_xid AS xid8), :last_id))
           OR (l.row_id IS NOT NULL AND {s.leaf("r")} <> l.leaf)
        ) changed
    ) numbered
    WHERE k <= :limit
    ORDER BY kind, id
    """


def _anchor_problems(session: Session, anchors: Iterable[Mapping[str, Any]]) -> tuple[int, list[SealProblem]]:
    problems: list[SealProblem] = []
    checked = 0
    for anchor in anchors:
        checked += 1
        stream, seq, expected = str(anchor["stream"]), int(anchor["seq"]), str(anchor["hash"]).lower()
        stored = session.execute(
            text("SELECT hash FROM ledger_seals WHERE stream = :stream AND seq = :seq"),
            {"stream": stream, "seq": seq},
        ).scalar_one_or_none()
        if stored is None:
            problems.append(SealProblem(stream, seq, "anchored seal is missing"))
        elif bytes(stored).hex() != expected:
            problems.append(SealProblem(stream, seq, f"hash differs from the anchored digest {expected}"))
    return checked, problems


def verify(session: Session, *, anchors: Iterable[Mapping[str, Any]] = (), limit: int = 1_000) -> VerifyReport:
    """Recompute every seal of every stream from the rows: each chain link and hash, each batch root from the
    leaves, and each sealed row's leaf. Names up to `limit` rows per stream and kind (the counts are exact).
    `anchors` are digests kept outside the database ({stream, seq, hash}, as `latest_digest` exports them): the
    stored chain must still reach them. Run it on one snapshot (REPEATABLE READ) for a consistent answer."""
    report = VerifyReport()
    for stream, s in _STREAMS.items():
        last = _head(session, stream)
        bounds = {"stream": stream, "max_seq": last.seq}
        chain = session.execute(text(_CHAIN_SQL), {**bounds, "genesis": GENESIS}).all()
        report.seals[stream] = len(chain)
        for link in chain:
            for ok, problem in (
                (link.seq_ok, "sequence gap before this seal"),
                (link.link_ok, "prev_hash does not match the previous seal's hash"),
                (link.hash_ok, "hash does not match its contents"),
                (link.range_ok, "first position after last position"),
                (link.order_ok, "range overlaps or precedes the previous seal"),
            ):
                if not ok:
                    report.seal_problems.append(SealProblem(stream, link.seq, problem))
        for root in session.execute(text(_ROOTS_SQL), bounds):
            if root.n_rows is None:
                problem = f"{root.n_leaves} leaves belong to no seal"
            elif root.n_leaves is None:
                problem = "no leaves left for this seal"
            elif root.n_leaves != root.n_rows:
                problem = f"{root.n_leaves} leaves for {root.n_rows} sealed rows"
            else:
                problem = "batch root does not match its leaves"
            report.seal_problems.append(SealProblem(stream, root.seq, problem))
        report.rows[stream] = session.execute(
            text("SELECT count(*) FROM ledger_seal_leaves WHERE stream = :stream AND seq <= :max_seq"), bounds
        ).scalar_one()
        counts: dict[str, int] = {}
        if last.seq:
            rows = session.execute(
                text(_rows_sql(s)), {**bounds, "last_xid": last.xid_to, "last_id": last.last_id, "limit": limit}
            )
            for change in rows:
                counts[change.kind] = change.n
                report.changes.append(RowChange(stream, change.kind, change.id))
        report.change_counts[stream] = counts
    report.anchors_checked, problems = _anchor_problems(session, anchors)
    report.seal_problems.extend(problems)
    return report


# --- export -----------------------------------------------------------------------------------------------


def latest_digests(session: Session) -> list[StreamDigest]:
    rows = session.execute(
        text(
            """
            SELECT DISTINCT ON (s.stream) s.stream, s.seq, s.hash, s.xid_to::text AS xid_to, s.last_id, s.sealed_at,
                   t.seals, t.rows
            FROM ledger_seals s
            JOIN (SELECT stream, count(*) AS seals, sum(n_rows) AS rows FROM ledger_seals GROUP BY stream) t
              ON t.stream = s.stream
            ORDER BY s.stream, s.seq DESC
            """
        )
    )
    return [
        StreamDigest(
            stream=r.stream,
            seq=r.seq,
            hash=bytes(r.hash).hex(),
            xid_to=r.xid_to,
            last_id=r.last_id,
            sealed_at=r.sealed_at,
            seals=r.seals,
            rows=int(r.rows),
        )
        for r in rows
    ]


def latest_digest(session: Session) -> dict[str, Any]:
    """The newest seal of each stream, to keep outside the database (and hand back to `verify` as anchors)."""
    return {
        "format": DIGEST_FORMAT,
        "exported_at": datetime.now(UTC).isoformat(),
        "streams": {d.stream: d.as_dict() for d in latest_digests(session)},
    }


def anchors_from_digest(digest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The {stream, seq, hash} anchors in a digest `latest_digest` exported."""
    if digest.get("format") != DIGEST_FORMAT:
        raise ValueError(f"not a {DIGEST_FORMAT} document")
    return [
        {"stream": d["stream"], "seq": d["seq"], "hash": d["hash"]} for d in dict(digest.get("streams", {})).values()
    ]


def header_hash(prev_hash: bytes, batch_root: bytes, result: SealResult) -> bytes:
    """The seal hash recomputed outside the database (same rule as the SQL), for independent checkers."""
    header = "|".join(
        str(v)
        for v in (
            result.stream,
            result.seq,
            result.xid_from,
            result.first_id,
            result.xid_to,
            result.last_id,
            result.n_rows,
        )
    )
    return hashlib.sha256(prev_hash + batch_root + header.encode()).digest()
