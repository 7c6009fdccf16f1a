from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    occurred_at: datetime
    actor_user_id: int | None
    actor_api_key_id: int | None
    tenant_id: int | None
    action: str
    target_type: str
    target_id: str | None
    request_id: str | None
    ip: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
