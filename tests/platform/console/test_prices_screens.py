"""The console's price book: the versions, and a new version through a preview (nothing written) and a
confirmation (the API's service, audited); refused to finance and tenant admins, and refused when the price
moved on since the preview."""

from __future__ import annotations

import re

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.pricing import service as pricing
from facemint.users.orm import Role
from tests.factories import create_tenant
from tests.platform.console.conftest import MakeConsoleUser
from tests.platform.console.console_helpers import console_post

OPERATION = "swap.image"


def versions(session: Session) -> int:
    return int(
        session.execute(text("SELECT count(*) FROM prices WHERE operation = :op"), {"op": OPERATION}).scalar_one()
    )


class TestNewVersion:
    def test_preview_then_confirm_makes_one_new_version_with_its_audit_event(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        operator = console_user(Role.operator)
        current = pricing.current_price(session, operation=OPERATION)
        count = versions(session)

        preview = console_post(
            operator.client, "/admin/prices/preview", operator.csrf,
            {"operation": OPERATION, "tokens_per_unit": "7", "note": "spring"},
        )  # fmt: skip
        assert preview.status_code == 200, preview.text
        assert f'data-old-price="{current.tokens_per_unit}"' in preview.text
        assert 'data-new-price="7"' in preview.text
        assert versions(session) == count, "a preview writes nothing"

        form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', preview.text))
        confirmed = console_post(
            operator.client, "/admin/prices", operator.csrf, {k: v for k, v in form.items() if k != "csrf_token"}
        )
        assert confirmed.status_code == 303, confirmed.text
        new = pricing.current_price(session, operation=OPERATION)
        assert (new.version, new.tokens_per_unit, new.note) == (current.version + 1, 7, "spring")
        assert new.actor == f"user:{operator.user.id}"
        event = session.execute(
            text("SELECT before, after, actor_user_id FROM audit_events WHERE action = 'price.set'")
        ).one()
        assert event.before["tokens_per_unit"] == current.tokens_per_unit
        assert event.after["tokens_per_unit"] == 7
        assert event.actor_user_id == operator.user.id

        page = operator.client.get(confirmed.headers["location"])
        assert f'data-set="{OPERATION}@{new.version}"' in page.text
        assert f'data-version="{OPERATION}@{new.version}"' in page.text

        # The same confirmation again names a version that is no longer in force: refused, nothing written.
        again = console_post(
            operator.client, "/admin/prices", operator.csrf, {k: v for k, v in form.items() if k != "csrf_token"}
        )
        assert again.status_code == 409
        assert 'data-code="price_changed"' in again.text
        assert versions(session) == count + 1

    def test_an_invalid_price_is_refused_at_the_preview(self, session: Session, console_user: MakeConsoleUser) -> None:
        operator = console_user(Role.operator)
        response = console_post(
            operator.client, "/admin/prices/preview", operator.csrf, {"operation": OPERATION, "tokens_per_unit": "0"}
        )
        assert response.status_code == 422
        unknown = console_post(
            operator.client,
            "/admin/prices/preview",
            operator.csrf,
            {"operation": "swap.nothing", "tokens_per_unit": "2"},
        )
        assert unknown.status_code == 404

    def test_a_confirmation_without_its_preview_is_refused(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        operator = console_user(Role.operator)
        response = console_post(
            operator.client, "/admin/prices", operator.csrf, {"operation": OPERATION, "tokens_per_unit": "3"}
        )
        assert response.status_code == 422
        assert versions(session) == 1


class TestRoles:
    def test_finance_sees_the_book_without_the_form_and_its_forged_posts_are_refused(
        self, session: Session, console_user: MakeConsoleUser
    ) -> None:
        finance = console_user(Role.finance)
        page = finance.client.get("/admin/prices")
        assert page.status_code == 200
        assert f'data-operation="{OPERATION}"' in page.text
        assert "Preview the change" not in page.text
        current = pricing.current_price(session, operation=OPERATION)
        for path in ("/admin/prices/preview", "/admin/prices"):
            forged = console_post(
                finance.client, path, finance.csrf,
                {"operation": OPERATION, "tokens_per_unit": "9", "expected_version": str(current.version)},
            )  # fmt: skip
            assert forged.status_code == 403
            assert 'data-code="insufficient_scope"' in forged.text
        assert versions(session) == 1

    def test_a_tenant_admin_reads_the_book_only(self, session: Session, console_user: MakeConsoleUser) -> None:
        admin = console_user(Role.tenant_admin, tenant=create_tenant(session))
        assert admin.client.get("/admin/prices").status_code == 200
        response = console_post(
            admin.client, "/admin/prices/preview", admin.csrf, {"operation": OPERATION, "tokens_per_unit": "2"}
        )
        assert response.status_code == 403
