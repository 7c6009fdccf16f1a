"""Console sessions, kept server-side in Redis. The browser holds only a random id (HttpOnly, SameSite=Strict
cookie); Redis stores a hash of it, so a copy of Redis lets nobody in. A session ends after its idle timeout (the
key's TTL, renewed by each request), at its absolute timeout (checked on read), on sign-out, and whenever the
user's credentials version moves on (a password or role change, a freeze: checked by the principal lookup)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, replace

from redis import Redis

COOKIE_NAME = "facemint_console"
# Before sign-in there is no session to hold a CSRF token: the sign-in form's token is a double-submit cookie.
SIGN_IN_CSRF_COOKIE = "facemint_console_csrf"
_KEY = "facemint:console:session:{}"
_PENDING_KEY = "facemint:console:pending:{}"
_TOTP_LAST_KEY = "facemint:console:totp-last:{}"
# How long a password-checked sign-in waits for its second factor.
PENDING_SECONDS = 300


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    user_id: int
    credentials_version: int
    csrf_token: str
    timezone: str
    created_at: float
    # A TOTP secret shown for enrolment, not yet confirmed with a code.
    pending_totp_secret: str | None = None


def _hashed(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(self, redis: Redis, *, idle_seconds: int, absolute_seconds: int) -> None:
        self.redis = redis
        self.idle_seconds = idle_seconds
        self.absolute_seconds = absolute_seconds

    def create(self, *, user_id: int, credentials_version: int, timezone: str) -> tuple[str, ConsoleSession]:
        session_id = secrets.token_urlsafe(32)
        data = ConsoleSession(
            user_id=user_id,
            credentials_version=credentials_version,
            csrf_token=secrets.token_urlsafe(32),
            timezone=timezone,
            created_at=time.time(),
        )
        self._write(session_id, data)
        return session_id, data

    def load(self, session_id: str | None) -> ConsoleSession | None:
        """The session, its idle timeout renewed; None if there is none or it has ended."""
        if not session_id or len(session_id) > 128:
            return None
        key = _KEY.format(_hashed(session_id))
        pipe = self.redis.pipeline()
        pipe.get(key)
        pipe.expire(key, self.idle_seconds)
        raw, _ = pipe.execute()
        if raw is None:
            return None
        data = ConsoleSession(**json.loads(raw))
        if time.time() - data.created_at > self.absolute_seconds:
            self.redis.delete(key)
            return None
        return data

    def update(self, session_id: str, data: ConsoleSession, **changes: object) -> ConsoleSession:
        changed = replace(data, **changes)  # type: ignore[arg-type]
        self._write(session_id, changed)
        return changed

    def destroy(self, session_id: str | None) -> None:
        if session_id:
            self.redis.delete(_KEY.format(_hashed(session_id)))

    def _write(self, session_id: str, data: ConsoleSession) -> None:
        remaining = self.absolute_seconds - (time.time() - data.created_at)
        ttl = max(1, int(min(self.idle_seconds, remaining)))
        self.redis.set(_KEY.format(_hashed(session_id)), json.dumps(asdict(data)), ex=ttl)

    # A sign-in whose password was right, waiting for the second factor: a token of its own, never a session.
    def start_pending(self, *, user_id: int, credentials_version: int, email: str) -> str:
        token = secrets.token_urlsafe(32)
        payload = {"user_id": user_id, "credentials_version": credentials_version, "email": email}
        self.redis.set(_PENDING_KEY.format(_hashed(token)), json.dumps(payload), ex=PENDING_SECONDS)
        return token

    def peek_pending(self, token: str | None) -> dict[str, object] | None:
        if not token or len(token) > 128:
            return None
        raw = self.redis.get(_PENDING_KEY.format(_hashed(token)))
        return json.loads(raw) if raw else None

    def finish_pending(self, token: str) -> None:
        self.redis.delete(_PENDING_KEY.format(_hashed(token)))

    def claim_totp_step(self, *, user_id: int, counter: int) -> bool:
        """True if `counter` is later than every code this user has had accepted (and record it): a code works
        once, even inside its 30 seconds."""
        script = (
            "local last = tonumber(redis.call('GET', KEYS[1]) or '-1') "
            "if tonumber(ARGV[1]) <= last then return 0 end "
            "redis.call('SET', KEYS[1], ARGV[1], 'EX', 180) return 1"
        )
        return bool(self.redis.eval(script, 1, _TOTP_LAST_KEY.format(user_id), counter))
