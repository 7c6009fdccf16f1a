"""The admin console's server time per page and per htmx fragment, and the size of its first load (issue 10).

Seeds a platform of ~60 days (bench/console_seed.py: 1,000,000 ledger entries, 100,000 users in ~200 tenants,
10,000 jobs, batches, webhook events, the audit trail; then approvals made through the HTTP API), starts a real
`facemint serve`, signs in through the console's own form (GET /admin/sign-in for the CSRF cookie, POST), and:

- discovers every console GET route from the app (APIRoutes under /admin, not /admin/v1, not sign-in, not
  downloads), fills its path parameters from seeded ids (all in the tenant admin's tenant, so every role may open
  them), and times, per route: the page; the page as an htmx fragment (HX-Request: true); its second page (the
  "Older" link of the first, as htmx like the pager); and each filter of its filter form alone, with a typical
  value (as htmx like the form);
- the dashboard also with its charts not cached (they are kept in Redis for 30 s): the cache keys are deleted
  before each of those requests;
- the time is what the client measures over loopback, whole body read (a Server-Timing header is reported too
  when the server sends one); each URL is requested `--warmup` times first, then `--runs` times;
- why: Postgres logs every statement slower than `--log-slower-than` ms while the pages are timed; the slowest
  shapes are reported with EXPLAIN (ANALYZE, BUFFERS) of their slowest instance (embedded Postgres only);
- the first load: the dashboard's HTML and everything it references (scripts, stylesheets, images, url() in
  stylesheets, fragments fetched on load), as sent (with Accept-Encoding: gzip, br) and as gzip would make it.

    .venv/bin/python bench/console.py                # full seed, 20 runs per URL (~8 minutes on 2 cores)
    .venv/bin/python bench/console.py --quick        # a tenth of the seed, 5 runs per URL (~40 s)
    .venv/bin/python bench/console.py --all-roles    # finance and the tenant admin on every route, not only dashboard

Targets: p95 under 150 ms per page and per fragment on this 2-core machine; first load under 300 KB (300,000
bytes as transferred). Misses are reported (MISSED), like the other benchmarks: the exit status is non-zero only
when something broke (a page answering 5xx, the seed, the server)."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import common
import console_seed
import httpx
import procs
from fastapi.routing import APIRoute, iter_route_contexts
from redis import Redis
from sqlalchemy import Engine, text

from facemint.db import make_engine, make_sessionmaker

PAGE_TARGET_MS = 150.0
DASHBOARD = "/admin/"
CHART_CACHE_KEYS = "facemint:dashboard:charts:*"
FIRST_LOAD_TARGET_BYTES = 300_000
BROWSER_HEADERS = {"Accept": "text/html,*/*", "Accept-Encoding": "gzip, deflate, br", "User-Agent": "bench-console"}
# Not pages: downloads, binary results, and steps that exist only after an upload (a bulk preview).
SKIP_PATTERNS = (r"/sign-in", r"/sign-out", r"/export$", r"\.csv$", r"\.jsonl?$", r"/thumbnail$", r"\{preview_id\}")
# Every route of the console is measured; these are only the values its path parameters take.
PARAMS: dict[str, str | tuple[str, ...]] = {
    "tenant_id": "tenant",
    "user_id": "user",
    "key_id": "key",
    "api_key_id": "key",
    "batch_id": "batch",
    "approval_id": "approval",
    "job_id": "job",
    "transaction_id": "transaction",
    "event_id": "event",
    "audit_id": "event",
    "hold_id": "hold",
    "account_id": "account",
    "webhook_id": "webhook",
    "log_name": ("recharges", "usage", "ledger", "audit"),
    "operation": ("swap.image",),
    "price_id": ("1",),
}
# A typical value for each filter field a list's form has (by its name); other fields are left out.
PREFERRED_OPTIONS = ("failed", "succeeded", "capture", "recharge", "batch", "pending", "active", "member")


@dataclass
class Timing:
    role: str
    route: str
    variant: str
    url: str
    status: int = 0
    ms: list[float] = field(default_factory=list)
    bytes: int = 0
    wire_bytes: int = 0
    encoding: str = ""
    server_timing: str = ""
    error: str = ""

    def stats(self) -> dict[str, Any]:
        ordered = sorted(self.ms)
        return {
            "role": self.role,
            "route": self.route,
            "variant": self.variant,
            "url": self.url,
            "status": self.status,
            "n": len(ordered),
            "p50_ms": round(statistics.median(ordered), 1) if ordered else None,
            "p95_ms": round(ordered[math.ceil(0.95 * len(ordered)) - 1], 1) if ordered else None,  # nearest rank
            "max_ms": round(ordered[-1], 1) if ordered else None,
            "bytes": self.bytes,
            "wire_bytes": self.wire_bytes,
            "encoding": self.encoding,
            "server_timing": self.server_timing,
            "error": self.error,
            "ms": [round(v, 2) for v in self.ms],
        }


# --- the console's routes --------------------------------------------------------------------------------------


def console_routes(srv: common.Servers) -> list[str]:
    """Every GET route of the console, as declared (with its {parameters})."""
    from facemint.app import create_app

    app = create_app(srv.settings())
    paths = []
    # Included routers are expanded lazily by FastAPI: iter_route_contexts walks them (as the tenancy test does).
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        if not isinstance(context.original_route, APIRoute) or "GET" not in (context.methods or ()):
            continue
        if not path.startswith("/admin/") or path.startswith("/admin/v1"):
            continue
        if any(re.search(p, path) for p in SKIP_PATTERNS):
            continue
        paths.append(path)
    return sorted(set(paths))


def fill(path: str, ids: dict[str, Any]) -> list[str] | None:
    """The URLs of a route with its parameters filled in (several for an enumerated one); None when a parameter
    has no seeded value."""
    urls = [path]
    for name in re.findall(r"\{(\w+)(?::\w+)?\}", path):
        value = PARAMS.get(name)
        if value is None or (isinstance(value, str) and ids.get(value) is None):
            return None
        values = value if isinstance(value, tuple) else (str(ids[value]),)
        pattern = re.compile(r"\{" + name + r"(?::\w+)?\}")
        urls = [pattern.sub(v, u) for u in urls for v in values]
    return urls


class PageParser(HTMLParser):
    """What the harness needs from a page: the "Older" link, the filter forms' fields, what it loads."""

    def __init__(self) -> None:
        super().__init__()
        self.next_url: str | None = None
        self.forms: list[dict[str, Any]] = []
        self.assets: list[str] = []
        self.loaded: list[str] = []  # fragments fetched by htmx on load
        self._select: dict[str, Any] | None = None
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a" and "next" in a.get("rel", "").split() and a.get("href"):
            self.next_url = a["href"]
        elif tag == "form" and a.get("method", "get").lower() == "get":
            self.forms.append({"action": a.get("action") or a.get("hx-get") or "", "fields": []})
            self._in_form = True
        elif tag == "form":
            self._in_form = False
        elif tag in ("input", "select") and self._in_form and a.get("name"):
            kind = a.get("type", "text" if tag == "input" else "select").lower()
            if kind not in ("hidden", "submit", "button", "checkbox", "radio"):
                entry = {"name": a["name"], "type": kind, "options": []}
                self.forms[-1]["fields"].append(entry)
                self._select = entry if tag == "select" else None
        elif tag == "option" and self._select is not None and a.get("value"):
            self._select["options"].append(a["value"])
        elif tag == "script" and a.get("src"):
            self.assets.append(a["src"])
        elif tag == "link" and a.get("href") and set(a.get("rel", "").split()) & {"stylesheet", "icon", "preload"}:
            self.assets.append(a["href"])
        elif tag == "img" and a.get("src") and not a["src"].startswith("data:"):
            self.assets.append(a["src"])
        if a.get("hx-get") and "load" in a.get("hx-trigger", ""):
            self.loaded.append(a["hx-get"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "form":
            self._in_form = False


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


def typical_filters(fields: list[dict[str, Any]], ids: dict[str, Any], tz_now: datetime) -> dict[str, dict[str, str]]:
    """One variant per filter field (a time range counts as one): its name -> the query it sends."""
    out: dict[str, dict[str, str]] = {}
    week_ago = (tz_now - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M")
    now = tz_now.strftime("%Y-%m-%dT%H:%M")
    date_range: dict[str, str] = {}
    for f in fields:
        name, kind, options = f["name"], f["type"], f["options"]
        lowered = name.lower()
        if kind == "select":
            preferred = [o for o in PREFERRED_OPTIONS if o in options]
            if preferred or options:
                out[name] = {name: (preferred or options)[0]}
        elif kind in ("datetime-local", "date") or lowered in ("from", "to", "since", "until", "start", "end"):
            is_end = any(w in lowered for w in ("to", "until", "end", "before"))
            value = now if is_end else week_ago
            date_range[name] = value[:10] if kind == "date" else value
        elif lowered in ("tenant_id", "tenant"):
            out[name] = {name: str(ids["tenant"])}
        elif lowered in ("user_id", "actor_user_id"):
            out[name] = {name: str(ids["user"])}
        elif lowered in ("user", "email", "recipient"):
            out[name] = {name: str(ids["user_email"])}
        elif lowered in ("q", "search", "query", "name"):
            out[name] = {name: "u12"}
        elif lowered == "batch_id":
            out[name] = {name: str(ids["batch"])}
        elif lowered == "job_id":
            out[name] = {name: str(ids["job"])}
        elif lowered in ("operator", "actor"):
            out[name] = {name: f"user:{ids['tenant_admin']}"}
        elif lowered == "action":
            out[name] = {name: "user.create"}
        elif lowered == "target_type":
            out[name] = {name: "user"}
        elif lowered == "target_id":
            out[name] = {name: str(ids["user"])}
    if date_range:
        out["time range"] = date_range
    return out


# --- signing in and timing ---------------------------------------------------------------------------------------


def sign_in(base: str, email: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=60, trust_env=False, headers=BROWSER_HEADERS)
    page = client.get("/admin/sign-in")
    page.raise_for_status()
    _plain_http(client)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if token is None:
        raise RuntimeError("the sign-in page has no CSRF field")
    answer = client.post(
        "/admin/sign-in",
        data={"email": email, "password": console_seed.PASSWORD, "csrf_token": token.group(1), "next": ""},
    )
    if answer.status_code != 303 or "facemint_console" not in client.cookies:
        raise RuntimeError(f"signing in as {email} failed: {answer.status_code} {answer.text[:300]}")
    _plain_http(client)
    return client


def _plain_http(client: httpx.Client) -> None:
    """The server runs as in production, so its cookies are Secure; over loopback HTTP the client sends them anyway
    (a browser would be on HTTPS behind the proxy)."""
    for cookie in client.cookies.jar:
        cookie.secure = False


def time_url(
    client: httpx.Client, t: Timing, *, htmx: bool, warmup: int, runs: int, before: Callable[[], object] | None = None
) -> httpx.Response | None:
    """Request `t.url` warmup + runs times, timing the last `runs`; `before` runs ahead of each (untimed)."""
    headers = {"HX-Request": "true", "HX-Current-URL": str(client.base_url.join(t.url))} if htmx else {}
    response = None
    for i in range(warmup + runs):
        if before is not None:
            before()
        begun = time.perf_counter()
        try:
            response = client.get(t.url, headers=headers)
            response.read()
        except httpx.HTTPError as exc:
            t.error = f"{type(exc).__name__}: {exc}"
            return None
        took = (time.perf_counter() - begun) * 1000
        if i >= warmup:
            t.ms.append(took)
    assert response is not None
    t.status = response.status_code
    t.bytes = len(response.content)
    t.wire_bytes = response.num_bytes_downloaded
    t.encoding = response.headers.get("content-encoding", "")
    t.server_timing = response.headers.get("server-timing", "")
    if response.status_code >= 500:
        t.error = response.text[:300]
    return response


def measure_role(
    client: httpx.Client, role: str, routes: list[str], ids: dict[str, Any], args: Any, drop_cache: Callable[[], object]
) -> list[Timing]:
    results: list[Timing] = []
    tz_now = datetime.now(UTC)
    for route in routes:
        urls = fill(route, ids)
        if urls is None:
            results.append(Timing(role, route, "skipped", route, error="no seeded value for a path parameter"))
            continue
        for url in urls:
            page = Timing(role, route, "page", url)
            response = time_url(client, page, htmx=False, warmup=args.warmup, runs=args.runs)
            results.append(page)
            results.append(fragment := Timing(role, route, "htmx", url))
            time_url(client, fragment, htmx=True, warmup=args.warmup, runs=args.runs)
            if route == DASHBOARD:
                # Its 30-day and 48-hour charts are cached in Redis for 30 s: one viewer in 30 s pays for them.
                results.append(cold := Timing(role, route, "page, charts not cached", url))
                time_url(client, cold, htmx=False, warmup=0, runs=max(3, args.runs // 4), before=drop_cache)
            if response is None or response.status_code != 200 or not args.variants:
                continue
            parsed = parse(response.text)
            if parsed.next_url:
                older = Timing(role, route, "htmx page 2", parsed.next_url)
                time_url(client, older, htmx=True, warmup=args.warmup, runs=args.runs)
                results.append(older)
            action_path = urlsplit(url).path
            for form in parsed.forms:
                action = urlsplit(form["action"]).path or action_path
                if action != action_path:
                    continue  # a form for another screen (e.g. a search box in the layout)
                for name, query in typical_filters(form["fields"], ids, tz_now).items():
                    filtered = Timing(role, route, f"htmx filter {name}", f"{url}?{urlencode(query)}")
                    time_url(client, filtered, htmx=True, warmup=args.warmup, runs=args.runs)
                    results.append(filtered)
        print(f"  [{role}] {route}: " + ", ".join(_short(t) for t in results if t.route == route), flush=True)
    return results


def _short(t: Timing) -> str:
    s = t.stats()
    return f"{t.variant} {s['status']} p95 {s['p95_ms']} ms" if s["n"] else f"{t.variant} {t.error or s['status']}"


def first_load(client: httpx.Client, path: str) -> dict[str, Any]:
    """The HTML and every asset it references, as a browser with an empty cache fetches them."""
    items: list[dict[str, Any]] = []
    seen: set[str] = set()

    def fetch(url: str, kind: str, htmx: bool = False) -> httpx.Response | None:
        if url in seen:
            return None
        seen.add(url)
        response = client.get(url, headers={"HX-Request": "true"} if htmx else {})
        body = response.content
        items.append(
            {
                "url": url,
                "kind": kind,
                "status": response.status_code,
                "bytes": len(body),
                "wire_bytes": response.num_bytes_downloaded,
                "content_encoding": response.headers.get("content-encoding", ""),
                "gzip_bytes": len(gzip.compress(body, 6)),
                "cache_control": response.headers.get("cache-control", ""),
            }
        )
        return response

    page = fetch(path, "html")
    assert page is not None
    parsed = parse(page.text)
    for asset in parsed.assets:
        url = urljoin(path, asset)
        response = fetch(url, "asset")
        if response is not None and url.split("?")[0].endswith(".css"):
            for ref in re.findall(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)", response.text):
                if not ref.startswith("data:"):
                    fetch(urljoin(url, ref), "css url")
    for fragment in parsed.loaded:
        fetch(urljoin(path, fragment), "htmx on load", htmx=True)
    total = {k: sum(i[k] for i in items) for k in ("bytes", "wire_bytes", "gzip_bytes")}
    return {"path": path, "items": items, **total, "server_compresses": any(i["content_encoding"] for i in items)}


# --- the data ----------------------------------------------------------------------------------------------------


def approvals_through_api(base: str, seeded: console_seed.Seeded, n: int) -> dict[str, int]:
    """Held recharges (single and batch) made, approved and rejected through the HTTP API, as operators would:
    their payloads, audit events and ledger postings are the product's own."""
    admin = {"Authorization": f"Bearer {seeded.api_keys['platform_admin']}"}
    operator = {"Authorization": f"Bearer {seeded.api_keys['operator']}"}
    made: list[int] = []
    outcome = {"pending": 0, "approved": 0, "rejected": 0}
    with httpx.Client(base_url=base, timeout=60, trust_env=False) as client:
        for i in range(n):
            if i % 5 == 4:  # a batch with one large row: held as a whole, its rows shown on the approval
                rows = [f"{seeded.ids['user_email']},200000,campaign-{i}"]
                rows += [f"u{u}@t1.bench.test,{100 + u},campaign-{i}-{u}" for u in range(2 + i % 7, 60, 3)]
                answer = client.post(
                    "/admin/v1/recharges/batch",
                    params={"mode": "partial", "reason": f"campaign {i}", "tenant_id": str(seeded.ids["tenant"])},
                    headers={**admin, "Idempotency-Key": f"bench-approval-{i}", "Content-Type": "text/csv"},
                    content=("email,amount,reference\n" + "\n".join(rows)).encode(),
                )
            else:
                answer = client.post(
                    "/admin/v1/recharges",
                    headers={**admin, "Idempotency-Key": f"bench-approval-{i}"},
                    json={"user_id": seeded.ids["user"], "amount": 150_000 + i, "reason": f"enterprise deal {i}"},
                )
            if answer.status_code != 202:
                raise RuntimeError(f"a held recharge answered {answer.status_code}: {answer.text[:300]}")
            made.append(answer.json()["id"])
        for i, approval_id in enumerate(made):
            decision = ("approve", "reject", None)[i % 3] if i < n - 6 else None
            if decision is None:
                outcome["pending"] += 1
                continue
            answer = client.post(
                f"/admin/v1/recharge-approvals/{approval_id}/{decision}", headers=operator, json={"note": "checked"}
            )
            answer.raise_for_status()
            outcome["approved" if decision == "approve" else "rejected"] += 1
        answer = client.post("/admin/v1/reconciliation/runs", headers=admin)
        outcome["reconciliation_status"] = answer.status_code
    seeded.ids["approval"] = made[-1]  # a pending batch approval, with rows
    return outcome


# --- why a page is slow ---------------------------------------------------------------------------------------

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


# --- main ----------------------------------------------------------------------------------------------------------


def summary_rows(timings: list[Timing]) -> list[dict[str, Any]]:
    return [t.stats() for t in timings]


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'role':<15}{'route / variant':<66}{'st':>4}{'p50':>8}{'p95':>8}{'max':>8}{'bytes':>9}")
    for r in rows:
        label = f"{r['url'] if r['variant'] == 'page' else '  ' + r['variant']}"[:65]
        if r["n"] == 0:
            print(f"{r['role']:<15}{label:<66}{r['status'] or '-':>4}  {r['error'][:60]}")
            continue
        flag = "" if r["p95_ms"] < PAGE_TARGET_MS else "  << over target"
        print(
            f"{r['role']:<15}{label:<66}{r['status']:>4}{r['p50_ms']:>8.1f}{r['p95_ms']:>8.1f}{r['max_ms']:>8.1f}"
            f"{r['bytes']:>9,}{flag}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the seed and 5 runs per URL")
    parser.add_argument("--entries", type=int)
    parser.add_argument("--users", type=int)
    parser.add_argument("--tenants", type=int)
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--runs", type=int, help="timed requests per URL (default 20, --quick 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--approvals", type=int, default=40, help="held recharges made through the API")
    parser.add_argument("--all-roles", action="store_true", help="finance and tenant admin on every route")
    parser.add_argument("--no-variants", dest="variants", action="store_false", help="pages and htmx only")
    parser.add_argument("--log-slower-than", type=int, default=100, help="ms: statements logged and EXPLAINed")
    parser.add_argument("--time-limit", type=int, default=1400)
    parser.add_argument("--out", type=Path, default=common.ROOT / "bench" / "out" / "console.json")
    args = parser.parse_args()
    common.bounded(args.time_limit)
    full = console_seed.Scale()
    div = 10 if args.quick else 1
    scale = console_seed.Scale(
        tenants=args.tenants or max(20, full.tenants // div),
        users=args.users or full.users // div,
        entries=args.entries or full.entries // div,
        jobs=args.jobs or full.jobs // div,
        periodic_batches=max(10, full.periodic_batches * (args.entries or full.entries // div) // full.entries),
    )
    args.runs = args.runs or (5 if args.quick else 20)
    report: dict[str, Any] = {"scale": scale.__dict__, "runs": args.runs, "warmup": args.warmup, "load": procs.load()}
    broken: list[str] = []
    with common.servers("console") as srv:
        report["environment"] = common.describe(srv)
        print(report["environment"], flush=True)
        engine = make_engine(srv.database_url, pool_size=2)
        begun = time.perf_counter()
        with make_sessionmaker(engine)() as session:
            seeded = console_seed.seed(session, srv.settings(), scale)
            console_seed.finish(engine, session, seeded)
        seed_seconds = time.perf_counter() - begun
        seeded.ids["tenant_admin"] = seeded.staff_ids["tenant_admin"]
        statement_log = log_slow_statements(engine, args.log_slower_than)
        unlimited = {"key": "1000000/minute", "tenant": "1000000/minute"}
        with procs.api_process(
            srv,
            # Four-eyes as in production for the approvals made below; no admission limits while measuring.
            FACEMINT_APPROVAL_THRESHOLD_AMOUNT="100000",
            FACEMINT_PLAN_LIMITS=json.dumps(dict.fromkeys(("free", "pro", "enterprise", "platform"), unlimited)),
        ) as (base, _api):
            begun = time.perf_counter()
            report["approvals"] = approvals_through_api(base, seeded, args.approvals)
            seeded.seconds["approvals and a reconciliation run (HTTP API)"] = round(time.perf_counter() - begun, 2)
            with engine.connect() as conn:
                for table in ("recharge_approvals", "ledger_entries", "audit_events"):
                    seeded.counts[table] = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            report["seed"] = {
                "seconds": round(seed_seconds, 1),
                "phases": seeded.seconds,
                "counts": seeded.counts,
                "ids": seeded.ids,
            }
            print(f"seeded in {seed_seconds:.0f} s: {seeded.counts}", flush=True)
            routes = console_routes(srv)
            report["routes"] = routes
            print(f"{len(routes)} console GET routes: {' '.join(routes)}", flush=True)
            timings: list[Timing] = []
            redis = Redis.from_url(srv.redis_url)

            def drop_cache() -> None:
                for key in redis.scan_iter(CHART_CACHE_KEYS):
                    redis.delete(key)

            report["first_load"] = {}
            report["load_before_timing"] = procs.load()
            log_offset = statement_log.stat().st_size if statement_log else 0
            for role in ("platform_admin", "finance", "tenant_admin"):
                client = sign_in(base, seeded.staff[role])
                try:
                    report["first_load"][role] = first_load(client, DASHBOARD)
                    chosen = routes if role == "platform_admin" or args.all_roles else [DASHBOARD]
                    timings += measure_role(client, role, chosen, seeded.ids, args, drop_cache)
                finally:
                    client.close()
            report["load_after_timing"] = procs.load()
            redis.close()
        if statement_log is not None:
            report["slow_statements"] = slow_statements(engine, statement_log, log_offset, top=12)
        engine.dispose()

    rows = summary_rows(timings)
    report["timings"] = rows
    print_table(rows)
    measured = [r for r in rows if r["n"]]
    over = [r for r in measured if r["status"] == 200 and r["p95_ms"] >= PAGE_TARGET_MS]
    broken += [f"{r['role']} {r['url']} ({r['status']})" for r in rows if r["status"] >= 500 or r["error"]]
    worst = max((r for r in measured if r["status"] == 200), key=lambda r: r["p95_ms"], default=None)
    print("\n=== summary ===")
    print(f"  {report['load_before_timing']} before timing, {report['load_after_timing']} after")
    print(
        f"  seed: {report['seed']['seconds']} s ({seeded.counts['ledger_entries']:,} entries, "
        f"{seeded.counts['users']:,} users, {seeded.counts['jobs']:,} jobs); {len(measured)} URLs x {args.runs} runs"
    )
    if worst:
        print(
            f"  [{'met' if not over else 'MISSED'}] p95 < {PAGE_TARGET_MS:.0f} ms for every page and fragment: "
            f"{len(measured) - len(over)} of {len(measured)} under; worst {worst['p95_ms']} ms "
            f"({worst['role']} {worst['variant']} {worst['url']})"
        )
    for role, load in report["first_load"].items():
        met = "met" if load["wire_bytes"] < FIRST_LOAD_TARGET_BYTES else "MISSED"
        print(
            f"  [{met}] first load ({role}, {len(load['items'])} files) {load['wire_bytes']:,} bytes transferred "
            f"({load['bytes']:,} uncompressed, {load['gzip_bytes']:,} if gzipped; the server "
            f"{'compresses' if load['server_compresses'] else 'does not compress'}) < {FIRST_LOAD_TARGET_BYTES:,}"
        )
    for g in report.get("slow_statements", []):
        one_line = " ".join(g["statement"].split())[:300]
        print(
            f"\n  slow statement: {g['count']} x over {args.log_slower_than} ms, max {g['max_ms']:.0f} ms, "
            f"total {g['total_ms']:.0f} ms: {one_line}"
        )
        for line in g.get("plan", [])[:14]:
            print(f"      {line}")
    for item in broken:
        print(f"  BROKEN: {item}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"results written to {args.out}")
    if broken:
        sys.exit(f"{len(broken)} console URL(s) failed")


if __name__ == "__main__":
    main()
