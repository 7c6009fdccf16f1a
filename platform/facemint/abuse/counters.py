"""The Redis side of abuse rules: a copy of each tenant's enabled rules, and the per-user counters they are
evaluated on, read and counted together in one Lua call (one round trip, no database).

The copy (`facemint:abuse:rules:<tenant>`) is JSON with the tenant's `abuse_rules_version`. Every change to a
tenant's rules moves the version on under the tenant row's lock and, once committed, writes the copy; a copy is
only ever replaced by a newer version (`_PUBLISH`), so two changes publishing out of order, or a lazy reload that
read the rules before a change and writes after it, cannot leave an older set in place. A missing copy (Redis
flushed or restarted, or its expiry) is reloaded from Postgres by whoever needs it next: one indexed read, then
the same compare-and-set. The copy expires after `RULES_TTL_SECONDS`, which bounds how long it can be stale if a
publish after a commit was lost (Redis unreachable at that moment).

Windows are fixed (aligned to multiples of their length since the epoch), not sliding: a window triggers only when
more than `max_jobs` fell inside it, which means more than `max_jobs` fell within some `window_seconds` span, so
traffic that never exceeds the limit in any span of that length never triggers (no false positives from the
windowing). The price is at the other end: up to `2 x max_jobs` can pass within one span that straddles a
boundary without a trigger.

Counters are per user (one user is one token account) and per "generation": unfreezing a user starts a new one
(`start_new_generation`), so an account unfrozen in the middle of a window starts that window afresh instead of
being frozen again by the counts that froze it. Keys are named inside the scripts (the rules decide them), which a
single Redis allows; a Redis Cluster would need the rules' keys passed in."""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.commands.core import Script
from sqlalchemy import text
from sqlalchemy.orm import Session

logger = logging.getLogger("facemint.abuse")

PREFIX = "facemint:abuse:"
RULES_KEY = PREFIX + "rules:{}"
GENERATION_KEY = PREFIX + "gen:{}"
RULES_TTL_SECONDS = 600
# A generation outlives the longest window (a day): by the time it expires, no counter of it is left.
GENERATION_TTL_SECONDS = 86400 + 1
# The hourly spend history a baseline is read from: the longest baseline (168 h) and the hour being counted.
SPEND_HISTORY_HOURS = 169


def rules_key(tenant_id: int) -> str:
    return RULES_KEY.format(tenant_id)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A tenant's enabled rules as the scripts read them, at one version of its rules."""

    version: int
    rules: tuple[dict[str, Any], ...]

    def encode(self) -> str:
        return json.dumps({"v": self.version, "rules": list(self.rules)}, separators=(",", ":"))


_LOAD = text(
    """
    SELECT t.abuse_rules_version AS version,
           coalesce(json_agg(json_build_object('id', r.id, 'kind', r.kind, 'action', r.action,
                                               'window', r.window_seconds, 'max', r.max_jobs,
                                               'multiple', r.multiple, 'hours', r.baseline_hours,
                                               'floor', r.min_tokens) ORDER BY r.id)
                    FILTER (WHERE r.id IS NOT NULL), '[]') AS rules
    FROM tenants t
    LEFT JOIN abuse_rules r ON r.tenant_id = t.id AND r.enabled AND r.deleted_at IS NULL
    WHERE t.id = :tenant
    GROUP BY t.abuse_rules_version
    """
)


def load_rule_set(session: Session, *, tenant_id: int) -> RuleSet:
    """The tenant's enabled rules and their version, in one statement (one snapshot)."""
    row = session.execute(_LOAD, {"tenant": tenant_id}).one_or_none()
    if row is None:
        return RuleSet(version=0, rules=())
    return RuleSet(version=int(row.version), rules=tuple(row.rules))


def publish(redis: Redis, *, tenant_id: int, rule_set: RuleSet) -> bool:
    """Write the tenant's copy unless Redis holds this version or a newer one. True when written."""
    written = _script(redis, "publish", _PUBLISH)(
        [rules_key(tenant_id)], [rule_set.encode(), rule_set.version, RULES_TTL_SECONDS]
    )
    return bool(written)


def start_new_generation(redis: Redis, *, user_id: int) -> None:
    """The user's counters start from zero (an unfreeze): every window counter, spend window and same-face count
    of the user is named by its generation. The hourly spend history a baseline is read from is kept."""
    pipe = redis.pipeline(transaction=True)
    pipe.incr(GENERATION_KEY.format(user_id))
    pipe.expire(GENERATION_KEY.format(user_id), GENERATION_TTL_SECONDS)
    pipe.execute()


@dataclass(frozen=True, slots=True)
class Triggered:
    """A rule past its limit in the current window. `first`: the first time in this window and generation (the
    one that is recorded; later ones of a `flag` rule are let through silently)."""

    rule_id: int
    kind: str
    action: str
    window_start: int  # epoch seconds
    window_seconds: int
    generation: int
    observed: dict[str, Any]
    first: bool


Loader = Callable[[], RuleSet]


def check_submit(
    redis: Redis, *, tenant_id: int, user_id: int, tokens: int, load: Loader, now: float | None = None
) -> list[Triggered]:
    """Count one submit of `tokens` against the user's windows and return the rules it takes past their limit:
    `jobs_per_window` and `spend_rate` (`same_face_per_window` is the worker's: `check_face`)."""
    args = [user_id, repr(time.time() if now is None else now), tokens, PREFIX]
    return _evaluate(redis, "submit", _SUBMIT, tenant_id=tenant_id, args=args, load=load)


def check_face(
    redis: Redis,
    *,
    tenant_id: int,
    user_id: int,
    job_public_id: str,
    bands: Sequence[str],
    load: Loader,
    now: float | None = None,
) -> list[Triggered]:
    """Count a job's source face (its LSH bands, `facemint.abuse.faces`) against the user's `same_face_per_window`
    rules. The count of a face is the most jobs that share any one of its bands in the window; a job is counted
    once however often it runs (its id goes in a set)."""
    args = [user_id, repr(time.time() if now is None else now), PREFIX, job_public_id, *bands]
    return _evaluate(redis, "face", _FACE, tenant_id=tenant_id, args=args, load=load)


def _evaluate(
    redis: Redis, name: str, source: bytes, *, tenant_id: int, args: list[Any], load: Loader
) -> list[Triggered]:
    script = _script(redis, name, source)
    key = rules_key(tenant_id)
    for _ in range(2):
        reply = script([key], args)
        if reply is not None:
            return [_triggered(item) for item in json.loads(reply)]
        # No copy of the tenant's rules: load them once and try again (a newer copy written meanwhile wins).
        publish(redis, tenant_id=tenant_id, rule_set=load())
    # Gone again at once (flushed twice in a row): this one event goes unchecked rather than failing the request.
    logger.warning("abuse rules of tenant %s could not be kept in Redis; %s not checked", tenant_id, name)
    return []


def _triggered(item: dict[str, Any]) -> Triggered:
    observed = {
        k: v for k, v in item.items() if k not in ("rule", "kind", "action", "window_start", "window", "gen", "first")
    }
    return Triggered(
        rule_id=int(item["rule"]),
        kind=str(item["kind"]),
        action=str(item["action"]),
        window_start=int(item["window_start"]),
        window_seconds=int(item["window"]),
        generation=int(item["gen"]),
        observed=observed,
        first=bool(item["first"]),
    )


_scripts: weakref.WeakKeyDictionary[Redis, dict[str, Script]] = weakref.WeakKeyDictionary()


def _script(redis: Redis, name: str, source: bytes) -> Script:
    registered = _scripts.setdefault(redis, {})
    if name not in registered:
        registered[name] = redis.register_script(source)
    return registered[name]


# KEYS[1] the tenant's copy; ARGV: the copy, its version, its lifetime. Written unless a version as new is there.
_PUBLISH = b"""
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current).v >= tonumber(ARGV[2]) then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""

# What both scripts share: the rules (nil when there is no copy: the caller reloads), the user's generation, a
# counter that is incremented once per call however many rules read it, and the first-trigger marker.
_COMMON = b"""
local raw = redis.call('GET', KEYS[1])
if not raw then
    return false
end
local rules = cjson.decode(raw).rules
local user, now = ARGV[1], tonumber(ARGV[2])
local gen = tonumber(redis.call('GET', PREFIX .. 'gen:' .. user) or '0')
local scope = user .. ':' .. gen
local counted = {}
local triggered = {}
local function fire(rule, w, observed)
    observed.rule = rule.id
    observed.kind = rule.kind
    observed.action = rule.action
    observed.window = rule.window
    observed.window_start = w * rule.window
    observed.gen = gen
    local marker = PREFIX .. 'fired:' .. rule.id .. ':' .. scope .. ':' .. w
    observed.first = redis.call('SET', marker, 1, 'EX', rule.window + 1, 'NX') and 1 or 0
    triggered[#triggered + 1] = observed
end
local function reply()
    if #triggered == 0 then
        return '[]'
    end
    return cjson.encode(triggered)
end
"""

# ARGV: user, now, tokens, prefix. `jobs_per_window`: one more job in the window. `spend_rate`: the tokens in the
# window against `multiple` x the average per window over the previous `hours` whole hours (an hourly history per
# user, kept while the tenant has a spend rule; `first` is its first hour), and never at or below `floor`. Until the
# history has a complete hour (up to two hours after an account's first spend) there is no baseline and the floor
# alone decides.
_SUBMIT = (
    b"local PREFIX = ARGV[4]\n"
    + _COMMON
    + b"""
local tokens = tonumber(ARGV[3])
local function add(key, amount, ttl)
    local value = counted[key]
    if value == nil then
        redis.call('SET', key, 0, 'EX', ttl, 'NX')
        value = redis.call('INCRBY', key, amount)
        counted[key] = value
    end
    return value
end
local history = PREFIX .. 'spend:' .. user
local hour = math.floor(now / 3600)
local recorded = false
for _, rule in ipairs(rules) do
    local w = math.floor(now / rule.window)
    if rule.kind == 'jobs_per_window' then
        local jobs = add(PREFIX .. 'jobs:' .. scope .. ':' .. rule.window .. ':' .. w, 1, rule.window + 1)
        if jobs > rule.max then
            fire(rule, w, {count = jobs, limit = rule.max})
        end
    elseif rule.kind == 'spend_rate' then
        if not recorded then
            redis.call('HINCRBY', history, hour, tokens)
            redis.call('HSETNX', history, 'first', hour)
            redis.call('EXPIRE', history, 169 * 3600)
            if redis.call('HLEN', history) > 171 then
                for _, field in ipairs(redis.call('HKEYS', history)) do
                    local h = tonumber(field)
                    if h and h < hour - 168 then
                        redis.call('HDEL', history, field)
                    end
                end
            end
            recorded = true
        end
        local spent = add(PREFIX .. 'spend:' .. scope .. ':' .. rule.window .. ':' .. w, tokens, rule.window + 1)
        if spent > rule.floor then
            -- Whole hours only, and none before the first complete hour of the history: a partly covered first
            -- hour would make a new account's baseline look lower than its rate.
            local first = tonumber(redis.call('HGET', history, 'first'))
            local from = math.max(hour - rule.hours, first + 1)
            local hours = math.max(hour - from, 0)
            local past, expected = 0, 0
            if hours > 0 then
                local fields = {}
                for h = from, hour - 1 do
                    fields[#fields + 1] = h
                end
                for _, value in ipairs(redis.call('HMGET', history, unpack(fields))) do
                    if value then
                        past = past + tonumber(value)
                    end
                end
                expected = past * rule.window / (hours * 3600)
            end
            if spent > rule.multiple * expected then
                fire(rule, w, {tokens = spent, limit = math.max(rule.multiple * expected, rule.floor),
                               baseline_tokens = past, baseline_hours = hours, expected = expected})
            end
        end
    end
end
return reply()
"""
)

# ARGV: user, now, prefix, the job's public id, then the face's bands. Each band's set of jobs in the window; the
# face's count is the largest.
_FACE = (
    b"local PREFIX = ARGV[3]\n"
    + _COMMON
    + b"""
local job = ARGV[4]
for _, rule in ipairs(rules) do
    if rule.kind == 'same_face_per_window' then
        local w = math.floor(now / rule.window)
        local most = 0
        for i = 5, #ARGV do
            local key = PREFIX .. 'face:' .. scope .. ':' .. rule.window .. ':' .. w .. ':' .. (i - 4) .. ':' .. ARGV[i]
            local jobs = counted[key]
            if jobs == nil then
                redis.call('SADD', key, job)
                redis.call('EXPIRE', key, rule.window + 1)
                jobs = redis.call('SCARD', key)
                counted[key] = jobs
            end
            if jobs > most then
                most = jobs
            end
        end
        if most > rule.max then
            fire(rule, w, {count = most, limit = rule.max})
        end
    end
end
return reply()
"""
)
