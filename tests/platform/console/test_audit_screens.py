"""The console's audit screen: events with actor, target and a before/after diff per key, the API's filters
plus a time range in the viewer's zone, and a tenant admin kept to its own tenant's events."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from facemint.users.orm import Role
from tests.factories import create_tenant
from tests.platform.conftest import MakeCaller
from tests.platform.console.conftest import MakeConsoleUser
from tests.platform.console.console_helpers import console_post, next_page_url, row_ids


def event_ids(page: str) -> list[int]:
    return row_ids(page, "data-event-id")


def change_price(client: TestClient, headers: dict[str, str], tokens: int) -> None:
    response = client.post(
        "/admin/v1/prices", json={"operation": "swap.image", "tokens_per_unit": tokens}, headers=headers
    )
    assert response.status_code == 201, response.text


class TestEvents:
    def test_an_event_shows_its_actor_target_and_a_diff_per_key(
        self, client: TestClient, session: Session, make_caller: MakeCaller, console_user: MakeConsoleUser
    ) -> None:
        operator = make_caller(Role.operator)
        change_price(client, operator.headers, 5)
        viewer = console_user(Role.finance)
        page = viewer.client.get("/admin/audit?action=price.set")
        assert page.status_code == 200, page.text
        [event_id] = event_ids(page.text)
        row = page.text[page.text.index(f'data-event-id="{event_id}"') :]
        assert f"user {operator.user.id}" in row[:600]
        assert "price swap.image@2" in row
        assert re.search(
            r'data-key="tokens_per_unit" data-change="changed">.*?<code>1</code>.*?<code>5</code>', row, re.S
        )
        assert re.search(r'data-key="operation" data-change="same"', row)
        assert re.search(r'data-key="version" data-change="changed"', row)

    def test_filters_narrow_by_actor_target_and_time_in_the_viewers_zone(
        self, client: TestClient, session: Session, make_caller: MakeCaller, console_user: MakeConsoleUser
    ) -> None:
        first, second = make_caller(Role.operator), make_caller(Role.operator)
        change_price(client, first.headers, 2)
        change_price(client, second.headers, 3)
        viewer = console_user(Role.operator)
        by_actor = event_ids(viewer.client.get(f"/admin/audit?actor_user_id={second.user.id}").text)
        assert len(by_actor) == 1
        by_target = event_ids(viewer.client.get("/admin/audit?target_type=price&target_id=swap.image@2").text)
        assert len(by_target) == 1
        assert by_target != by_actor
        console_post(viewer.client, "/admin/account/timezone", viewer.csrf, {"timezone": "Asia/Tokyo"})
        local = datetime.now(ZoneInfo("Asia/Tokyo")).replace(tzinfo=None)
        recent = event_ids(
            viewer.client.get(
                f"/admin/audit?target_type=price&from={(local - timedelta(minutes=10)).isoformat(timespec='seconds')}"
            ).text
        )
        assert len(recent) == 2
        none = event_ids(
            viewer.client.get(
                f"/admin/audit?target_type=price&to={(local - timedelta(minutes=10)).isoformat(timespec='seconds')}"
            ).text
        )
        assert none == []

    def test_pages_follow_the_cursor(
        self, client: TestClient, session: Session, make_caller: MakeCaller, console_user: MakeConsoleUser
    ) -> None:
        operator = make_caller(Role.operator)
        for tokens in (2, 3, 4):
            change_price(client, operator.headers, tokens)
        viewer = console_user(Role.operator)
        page = viewer.client.get("/admin/audit?action=price.set&limit=2")
        first = event_ids(page.text)
        link = next_page_url(page.text)
        assert len(first) == 2
        assert link
        rest = event_ids(viewer.client.get(link).text)
        assert len(rest) == 1
        assert rest[0] < min(first)


class TestTenantAdmin:
    def test_a_tenant_admin_sees_its_tenants_events_only(
        self, client: TestClient, session: Session, make_caller: MakeCaller, console_user: MakeConsoleUser
    ) -> None:
        mine, other = create_tenant(session), create_tenant(session)
        operator = make_caller(Role.operator)
        change_price(client, operator.headers, 6)  # a platform event (no tenant)
        for tenant in (mine, other):
            response = client.post(
                "/admin/v1/users",
                json={
                    "email": f"x{tenant.id}@example.test",
                    "role": "member",
                    "tenant_id": tenant.id,
                    "password": "correct-horse-battery",
                },
                headers=operator.headers,
            )
            assert response.status_code == 201, response.text
        admin = console_user(Role.tenant_admin, tenant=mine)
        page = admin.client.get("/admin/audit?target_type=user")
        assert page.status_code == 200
        ids = event_ids(page.text)
        assert ids
        assert f"x{other.id}@example.test" not in page.text
        assert event_ids(admin.client.get("/admin/audit?action=price.set").text) == []
        assert admin.client.get(f"/admin/audit?tenant_id={other.id}").status_code == 404
