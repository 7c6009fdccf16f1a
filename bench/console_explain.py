"""Why a console page is slow, for bench/console.py: Postgres logs every statement slower than a threshold while
the pages are timed; the slowest shapes are reported with EXPLAIN (ANALYZE, BUFFERS) of their slowest instance
(embedded Postgres only: the log must be on this machine)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

_LOG_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \w+ \[\d+\] ", re.M)
_SLOW = re.compile(r"duration: ([0-9.]+) ms\s+statement: (.*)", re.S)


def log_slow_statements(engine: Engine, min_ms: int) -> Path | None:
    """Have Postgres log every statement slower than `min_ms` (the API's connections, opened after this); returns
    its log file when it is on this machine (embedded Postgres), else None."""
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            database = conn.execute(text("SELECT current_database()")).scalar_one()
            conn.exec_driver_sql(f'ALTER DATABASE "{database}" SET log_min_duration_statement = {int(min_ms)}')
            data_dir = Path(conn.execute(text("SHOW data_directory")).scalar_one())
    except Exception as exc:  # not a superuser on someone else's server: no statement log, the rest still runs
        print(f"  (no slow-statement log: {exc})", file=sys.stderr)
        return None
    log = data_dir / "log"
    return log if log.is_file() else None


def slow_statements(engine: Engine, log: Path, offset: int, top: int) -> list[dict[str, Any]]:
    """The slowest statements the server logged since `offset`, grouped by shape (literals blanked), each with
    EXPLAIN (ANALYZE, BUFFERS) of its slowest instance (read-only statements only)."""
    with log.open("rb") as f:
        f.seek(offset)
        content = f.read().decode(errors="replace")
    starts = [m.start() for m in _LOG_ENTRY.finditer(content)] + [len(content)]
    groups: dict[str, dict[str, Any]] = {}
    for a, b in zip(starts, starts[1:], strict=False):
        found = _SLOW.search(content[a:b])
        if found is None:
            continue
        ms, statement = float(found.group(1)), found.group(2).strip()
        shape = re.sub(r"'[^']*'|\b\d+\b", "?", re.sub(r"\s+", " ", statement))
        g = groups.setdefault(shape, {"count": 0, "total_ms": 0.0, "max_ms": 0.0, "statement": statement})
        g["count"] += 1
        g["total_ms"] = round(g["total_ms"] + ms, 1)
        if ms >= g["max_ms"]:
            g["max_ms"], g["statement"] = ms, statement
    chosen = sorted(groups.values(), key=lambda g: g["max_ms"], reverse=True)[:top]
    for g in chosen:
        statement = g["statement"]
        if not re.match(r"(?is)\s*(select|with)\b", statement) or re.search(
            r"(?i)\b(insert|update|delete|for update)\b", statement
        ):
            continue
        with engine.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement.replace("%", "%%")).all()
            conn.rollback()
        g["plan"] = [row[0] for row in plan]
    return chosen
