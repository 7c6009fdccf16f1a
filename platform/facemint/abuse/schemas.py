from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from facemint.abuse.orm import COUNT_KINDS, RuleAction, RuleKind, TriggerStatus

WindowSeconds = Annotated[int, Field(ge=1, le=86400, description="the fixed window, in seconds (at most a day)")]
MaxJobs = Annotated[int, Field(ge=1, le=1_000_000)]
Multiple = Annotated[float, Field(gt=1, le=1000)]
BaselineHours = Annotated[int, Field(ge=1, le=168)]
MinTokens = Annotated[int, Field(ge=0, le=2**62)]

_COUNT_FIELDS = ("max_jobs",)
_SPEND_FIELDS = ("multiple", "baseline_hours", "min_tokens")


def check_parameters(
    kind: RuleKind,
    *,
    window_seconds: int,
    max_jobs: int | None,
    multiple: float | None,
    baseline_hours: int | None,
    min_tokens: int | None,
) -> None:
    """Each kind takes exactly its own parameters (raises ValueError naming what is wrong); the database checks
    the same (`ck_abuse_rules_parameters`)."""
    given = {"max_jobs": max_jobs, "multiple": multiple, "baseline_hours": baseline_hours, "min_tokens": min_tokens}
    needed = _COUNT_FIELDS if kind in COUNT_KINDS else _SPEND_FIELDS
    missing = [name for name in needed if given[name] is None]
    extra = [name for name, value in given.items() if value is not None and name not in needed]
    if missing:
        raise ValueError(f"a {kind.value} rule needs {', '.join(missing)}")
    if extra:
        raise ValueError(f"a {kind.value} rule takes no {', '.join(extra)}")
    if kind is RuleKind.spend_rate and baseline_hours is not None and window_seconds > baseline_hours * 3600:
        raise ValueError("the window of a spend_rate rule cannot be longer than its baseline")


class AbuseRuleCreate(BaseModel):
    """`jobs_per_window` and `same_face_per_window` take `max_jobs`: the rule triggers at the job past it within
    one window. `spend_rate` takes `multiple`, `baseline_hours` and `min_tokens`: it triggers when the tokens of
    one window pass both `min_tokens` and `multiple` times what the account spent per window, on average, over the
    previous `baseline_hours` whole hours."""

    model_config = ConfigDict(extra="forbid")
    kind: RuleKind
    action: RuleAction
    enabled: bool = True
    window_seconds: WindowSeconds
    max_jobs: MaxJobs | None = None
    multiple: Multiple | None = None
    baseline_hours: BaselineHours | None = None
    min_tokens: MinTokens | None = None

    @model_validator(mode="after")
    def _parameters_fit_the_kind(self) -> AbuseRuleCreate:
        check_parameters(
            self.kind,
            window_seconds=self.window_seconds,
            max_jobs=self.max_jobs,
            multiple=self.multiple,
            baseline_hours=self.baseline_hours,
            min_tokens=self.min_tokens,
        )
        return self


class AbuseRuleUpdate(BaseModel):
    """Any of a rule's settings but its kind; the result must still fit the kind."""

    model_config = ConfigDict(extra="forbid")
    action: RuleAction | None = None
    enabled: bool | None = None
    window_seconds: WindowSeconds | None = None
    max_jobs: MaxJobs | None = None
    multiple: Multiple | None = None
    baseline_hours: BaselineHours | None = None
    min_tokens: MinTokens | None = None


class AbuseRuleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    tenant_id: int
    kind: RuleKind
    action: RuleAction
    enabled: bool
    window_seconds: int
    max_jobs: int | None
    multiple: float | None
    baseline_hours: int | None
    min_tokens: int | None
    created_at: datetime
    updated_at: datetime


class AbuseTriggerRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    tenant_id: int
    rule_id: int
    user_id: int
    kind: RuleKind
    action: RuleAction
    window_start: datetime
    window_seconds: int
    generation: int
    observed: dict[str, Any]
    job_public_id: str | None
    status: TriggerStatus
    resolved_by_user_id: int | None
    resolved_at: datetime | None
    note: str | None
    unfroze: bool
    created_at: datetime


class AbuseTriggerResolve(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: Annotated[str | None, StringConstraints(strip_whitespace=True, max_length=2000)] = None
    unfreeze: bool = Field(
        default=False, description="also unfreeze the user (as POST /admin/v1/users/{id}/unfreeze, same checks)"
    )
