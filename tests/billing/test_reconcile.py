"""billing.reports.reconcile: what the checks leave behind in the caller's transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.reports.reconcile import reconcile


@pytest.mark.parametrize("setting", ["on", "off"])
def test_the_callers_nested_loop_setting_comes_back_after_the_checks(session: Session, setting: str) -> None:
    """The checks run with nested loops off (a plan made on stale statistics must not go quadratic), and the
    transaction carries on with whatever it had set before."""
    session.execute(text("SELECT set_config('enable_nestloop', :value, true)"), {"value": setting})
    report = reconcile(session)
    assert report.balanced
    assert session.execute(text("SELECT current_setting('enable_nestloop')")).scalar_one() == setting
