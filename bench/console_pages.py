"""The console's pages for bench/console.py: which there are (every console GET route of the app, its path
parameters filled from seeded ids), signing in through the console's own form, timing each page, its htmx fragment,
its second page and its filters, and the first load (the dashboard and everything it references)."""

from __future__ import annotations

import gzip
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import common
import console_seed
import httpx
from fastapi.routing import APIRoute, iter_route_contexts

DASHBOARD = "/admin/"
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
