"""The demo `facemint up` seeds: a platform admin, a demo tenant with a tenant admin and two members, their API
keys, a sample CSV and some tokens. Idempotent: a second run finds the demo and prints it again."""

from __future__ import annotations

import csv
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from facemint.api_keys import service as key_service
from facemint.api_keys.schemas import ApiKeyCreate
from facemint.auth.principal import Principal
from facemint.auth.scopes import scopes_for_role
from facemint.config import Settings
from facemint.context import RequestContext
from facemint.recharges import service as recharge_service
from facemint.recharges.schemas import RechargeCreate
from facemint.tenants import service as tenant_service
from facemint.tenants.orm import Plan, Tenant
from facemint.tenants.schemas import TenantCreate
from facemint.users import service as user_service
from facemint.users.orm import STAFF_ROLES, Role, User
from facemint.users.schemas import UserCreate

DEMO_TENANT = "Demo Co"
ADMIN_EMAIL = "admin@facemint.local"
DEMO_FILE = "demo.json"
SAMPLE_CSV = "sample-recharge.csv"
# Two operators (four eyes: one requests, the other approves), finance (reads), the tenant's admin and two members.
DEMO_PEOPLE = (
    ("ops", Role.operator),
    ("ops2", Role.operator),
    ("finance", Role.finance),
    ("owner", Role.tenant_admin),
    ("alice", Role.member),
    ("bob", Role.member),
)


@dataclass
class Demo:
    credentials: dict[str, Any]
    sample_csv: Path
    created: bool


def _context(user: User) -> RequestContext:
    principal = Principal(
        user_id=user.id,
        email=user.email,
        role=Role(user.role),
        tenant_id=user.tenant_id,
        account_id=user.account_id,
        plan="platform" if user.tenant_id is None else "pro",
        scopes=scopes_for_role(user.role),
    )
    return RequestContext(principal=principal, request_id="demo-seed", ip="127.0.0.1")


def write_sample_images(data_dir: Path) -> tuple[Path, Path]:
    """Two images the demo models find a face in (a bright tiled square; see inference.models.demo)."""
    import io

    import numpy as np
    from PIL import Image

    from inference.models.demo import draw_demo_face

    paths = []
    for name, identity in (("demo-source.png", 1), ("demo-target.png", 2)):
        image = np.zeros((384, 384, 3), dtype=np.uint8)
        draw_demo_face(image, 96, 96, 192, identity=identity)
        buffer = io.BytesIO()
        Image.fromarray(image[:, :, ::-1]).save(buffer, format="PNG")
        (data_dir / name).write_bytes(buffer.getvalue())
        paths.append(data_dir / name)
    return paths[0], paths[1]


def seed(session: Session, *, settings: Settings, data_dir: Path) -> Demo:
    demo_path = data_dir / DEMO_FILE
    sample = data_dir / SAMPLE_CSV
    write_sample_images(data_dir)
    if demo_path.exists() and session.scalar(select(Tenant.id).where(Tenant.name == DEMO_TENANT)) is not None:
        return Demo(credentials=json.loads(demo_path.read_text()), sample_csv=sample, created=False)

    admin_password = secrets.token_urlsafe(12)
    admin, _ = user_service.bootstrap_admin(session, email=ADMIN_EMAIL, password=admin_password)
    admin_ctx = _context(admin)
    tenant = session.scalar(select(Tenant).where(Tenant.name == DEMO_TENANT))
    if tenant is None:
        tenant = tenant_service.create(session, context=admin_ctx, data=TenantCreate(name=DEMO_TENANT, plan=Plan.pro))

    people: dict[str, dict[str, Any]] = {}
    for handle, role in DEMO_PEOPLE:
        email = f"{handle}@facemint.local" if role in STAFF_ROLES else f"{handle}@demo.facemint.local"
        password = secrets.token_urlsafe(12)
        user = user_service.get_by_email(session, email=email)
        if user is None:
            user = user_service.create(
                session,
                context=admin_ctx,
                data=UserCreate(
                    email=email, role=role, tenant_id=None if role in STAFF_ROLES else tenant.id, password=password
                ),
            )
        else:
            user_service.bootstrap_password(session, user=user, password=password)
        people[handle] = {"email": email, "password": password, "user_id": user.id, "role": role.value}

    keys: dict[str, str] = {}
    holders = [("admin", admin)] + [
        (h, session.get(User, p["user_id"])) for h, p in people.items() if p["role"] not in STAFF_ROLES
    ]
    for handle, holder in holders:
        assert holder is not None
        _, plaintext = key_service.create(
            session,
            context=admin_ctx,
            settings=settings,
            data=ApiKeyCreate(user_id=holder.id, name=f"demo {handle}", scopes=sorted(scopes_for_role(holder.role))),
        )
        keys[handle] = plaintext

    recharge_service.recharge_one(
        session,
        context=admin_ctx,
        data=RechargeCreate(tenant_id=tenant.id, amount=10_000, reason="demo: fill the Demo Co pool"),
        idempotency_key="demo-pool-fill",
    )
    owner = session.get(User, people["owner"]["user_id"])
    assert owner is not None
    for handle, amount in (("alice", 500), ("bob", 250)):
        recharge_service.recharge_one(
            session,
            context=_context(owner),
            data=RechargeCreate(user_id=people[handle]["user_id"], amount=amount, reason="demo: welcome tokens"),
            idempotency_key=f"demo-welcome-{handle}",
        )

    with sample.open("w", newline="") as handle_file:
        writer = csv.writer(handle_file)
        writer.writerow(["email", "amount", "reference"])
        writer.writerow([people["alice"]["email"], 100, "demo-bonus-alice"])
        writer.writerow([people["bob"]["email"], 50, "demo-bonus-bob"])

    credentials = {
        "admin": {"email": ADMIN_EMAIL, "password": admin_password, "api_key": keys["admin"]},
        "tenant": {"id": tenant.id, "name": tenant.name},
        **{h: {**p, "api_key": keys.get(h)} for h, p in people.items()},
    }
    # Demo secrets for a local sandbox only; the file is readable by its owner alone.
    demo_path.write_text(json.dumps(credentials, indent=2))
    os.chmod(demo_path, 0o600)
    return Demo(credentials=credentials, sample_csv=sample, created=True)


def describe(demo: Demo, *, api_url: str) -> str:
    c = demo.credentials
    lines = [
        "Demo data" + (" (created)" if demo.created else " (already there)") + ":",
        f"  platform admin   {c['admin']['email']}  password {c['admin']['password']}",
        f"                   API key {c['admin']['api_key']}",
        f"  tenant           {c['tenant']['name']} (id {c['tenant']['id']})",
    ]
    for handle, _ in DEMO_PEOPLE:
        if handle not in c:  # a demo seeded before this person was added
            continue
        p = c[handle]
        lines.append(f"  {p['role']:<16} {p['email']}  password {p['password']}")
        if p.get("api_key"):
            lines.append(f"                   API key {p['api_key']}")
    lines += [
        f"  sample CSV       {demo.sample_csv}",
        "",
        f"Admin console: {api_url}/admin/ (sign in with any staff or tenant-admin email and password above)",
        "",
        "Try it:",
        "  # Alice's balance",
        f"  curl -s {api_url}/v1/balance -H 'Authorization: Bearer {c['alice']['api_key']}'",
        "  # Bulk recharge from the sample CSV, paid from the Demo Co pool by its tenant admin",
        f"  curl -s -X POST '{api_url}/admin/v1/recharges/batch?mode=atomic&reason=demo%20bonus' \\",
        f"       -H 'Authorization: Bearer {c['owner']['api_key']}' -H 'Idempotency-Key: demo-bonus-1' \\",
        f"       -H 'Content-Type: text/csv' --data-binary @{demo.sample_csv}",
        "  # Alice's ledger",
        f"  curl -s {api_url}/v1/ledger -H 'Authorization: Bearer {c['alice']['api_key']}'",
        "  # A swap by Alice (1 token; demo models make a placeholder image), waiting up to 10 s for the result",
        f"  curl -s -X POST {api_url}/v1/swaps -H 'Authorization: Bearer {c['alice']['api_key']}' \\",
        "       -H 'Idempotency-Key: demo-swap-1' -H 'Prefer: wait=10' \\",
        f"       -F source=@{demo.sample_csv.parent / 'demo-source.png'} "
        f"-F target=@{demo.sample_csv.parent / 'demo-target.png'}",
        "  # ... then download it: the job's result_url",
        f"  curl -s {api_url}/v1/jobs/<job id>/result -H 'Authorization: Bearer {c['alice']['api_key']}' -o out.png",
        "  # A JWT for the platform admin",
        f"  curl -s -X POST {api_url}/auth/token -H 'Content-Type: application/json' \\",
        f'       -d \'{{"email": "{c["admin"]["email"]}", "password": "{c["admin"]["password"]}"}}\'',
    ]
    return "\n".join(lines)
