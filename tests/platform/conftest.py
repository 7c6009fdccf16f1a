"""Shared fixtures for the API tests: an app and client on the test servers, and callers with API keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from facemint.app import create_app
from facemint.auth.scopes import Scope
from facemint.config import Settings
from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import bearer, create_user, issue_key


@dataclass(frozen=True)
class Caller:
    """A user with an API key, ready to send requests."""

    user: User
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def tenant_id(self) -> int | None:
        return self.user.tenant_id


MakeCaller = Callable[..., Caller]


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def make_caller(session: Session, settings: Settings) -> MakeCaller:
    """`make_caller(role, tenant=None, scopes=None)`: a new user of that role with a key (all its role's scopes
    unless `scopes` is given)."""

    def make(role: Role, tenant: Tenant | None = None, scopes: list[Scope] | None = None) -> Caller:
        user = create_user(session, tenant=tenant, role=role)
        return Caller(user=user, key=issue_key(session, settings, user, scopes=scopes))

    return make
