"""Access tokens: PyJWT, HS256 pinned, `kid` for rotation, exp/iat/iss/aud/sub/cv required.

`cv` is the user's credentials version when the token was issued: a password, role or status change (or signing
out everywhere) moves the version on, and every earlier token stops working (`facemint.auth.service`)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

from facemint.config import Settings

ALGORITHM = "HS256"
LEEWAY_SECONDS = 30
MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class TokenSubject:
    user_id: int
    credentials_version: int


def issue_access_token(settings: Settings, *, user_id: int, credentials_version: int) -> AccessToken:
    now = int(time.time())
    ttl = settings.access_token_ttl_seconds
    claims = {
        "sub": str(user_id),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "jti": uuid.uuid4().hex,
        "cv": credentials_version,
    }
    token = jwt.encode(claims, settings.jwt_signing_secret, algorithm=ALGORITHM, headers={"kid": settings.jwt_kid})
    return AccessToken(token=token, expires_in=ttl)


def decode_access_token(settings: Settings, token: str) -> TokenSubject:
    """The user (and credentials version) a valid token names. Raises jwt.InvalidTokenError for anything else."""
    if len(token) > MAX_TOKEN_BYTES:
        raise jwt.InvalidTokenError("token too large")
    header = jwt.get_unverified_header(token)
    # The allowed algorithm is pinned here, never read from the token.
    if header.get("alg") != ALGORITHM:
        raise jwt.InvalidAlgorithmError("algorithm not allowed")
    key = settings.jwt_verification_keys.get(str(header.get("kid", "")))
    if key is None:
        raise jwt.InvalidKeyError("unknown key id")
    claims = jwt.decode(
        token,
        key,
        algorithms=[ALGORITHM],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway=LEEWAY_SECONDS,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "cv"]},
    )
    if claims["iat"] > time.time() + LEEWAY_SECONDS:
        raise jwt.ImmatureSignatureError("issued in the future")
    if claims["exp"] - claims["iat"] > 86400:
        raise jwt.InvalidTokenError("token lifetime too long")
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject.isdigit():
        raise jwt.InvalidTokenError("bad subject")
    version = claims["cv"]
    if type(version) is not int or version < 1:
        raise jwt.InvalidTokenError("bad credentials version")
    return TokenSubject(user_id=int(subject), credentials_version=version)
