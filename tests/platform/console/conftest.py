"""Console fixtures: an httpx client signed in as a user of a given role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from facemint.tenants.orm import Tenant
from facemint.users.orm import Role, User
from tests.factories import create_user
from tests.platform.console.console_helpers import console_sign_in


@dataclass
class ConsoleUser:
    """A user signed in to the console: its own client (cookies) and the session's CSRF token."""

    user: User
    client: TestClient
    csrf: str


MakeConsoleUser = Callable[..., ConsoleUser]


@pytest.fixture
def console_user(app: FastAPI, session: Session) -> Iterator[MakeConsoleUser]:
    """`console_user(role, tenant=None)`: a new user of that role, signed in to the console with its own client."""
    clients: list[TestClient] = []

    def make(role: Role, tenant: Tenant | None = None, user: User | None = None) -> ConsoleUser:
        user = user or create_user(session, role=role, tenant=tenant)
        client = TestClient(app, base_url="http://testserver")
        client.__enter__()
        clients.append(client)
        return ConsoleUser(user=user, client=client, csrf=console_sign_in(client, user.email))

    yield make
    for client in clients:
        client.__exit__(None, None, None)
