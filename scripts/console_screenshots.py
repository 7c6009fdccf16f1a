"""Screenshots of every console screen for docs/console/, taken from a real `facemint up` (embedded Postgres and
Redis, the demo, a worker) after a little activity: swaps, a bulk recharge, a held recharge awaiting approval.

    .venv/bin/python scripts/console_screenshots.py            # writes docs/console/*.png
    .venv/bin/python scripts/console_screenshots.py --out /tmp/shots

Needs Debian's chromium (`make browser`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEMINT_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "facemint.cli.main", "up", "--data-dir", str(data_dir), "--port", str(port)],
        env=env,
        stdout=(data_dir.parent / "up.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit((data_dir.parent / "up.log").read_text()[-3000:])
        time.sleep(0.5)
    raise SystemExit("facemint up did not answer /healthz")


def activity(base: str, demo: dict, data_dir: Path) -> None:
    """What a morning of use leaves behind: swaps, a bulk recharge, a recharge held for four eyes."""
    with httpx.Client(base_url=base, timeout=30) as http:
        alice = {"Authorization": f"Bearer {demo['alice']['api_key']}"}
        for n in range(4):
            files = {
                "source": ("s.png", (data_dir / "demo-source.png").read_bytes(), "image/png"),
                "target": ("t.png", (data_dir / "demo-target.png").read_bytes(), "image/png"),
            }
            http.post(
                "/v1/swaps", headers={**alice, "Idempotency-Key": f"shot-swap-{n}", "Prefer": "wait=20"}, files=files
            )
        owner = {"Authorization": f"Bearer {demo['owner']['api_key']}"}
        http.post(
            "/admin/v1/recharges/batch",
            params={"mode": "atomic", "reason": "welcome bonus"},
            headers={**owner, "Idempotency-Key": "shot-batch", "Content-Type": "text/csv"},
            content=(data_dir / "sample-recharge.csv").read_bytes(),
        )
        token = http.post("/auth/token", json={"email": demo["ops"]["email"], "password": demo["ops"]["password"]})
        ops = {"Authorization": f"Bearer {token.json()['access_token']}"}
        held = http.post(
            "/admin/v1/recharges",
            headers={**ops, "Idempotency-Key": "shot-held"},
            json={"user_id": demo["bob"]["user_id"], "amount": 250_000, "reason": "partner launch credit"},
        )
        assert held.status_code == 202, held.text


def sign_in(page: Page, email: str, password: str) -> None:
    page.goto("/admin/sign-in")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("header.top")


def shoot(page: Page, out: Path, name: str, path: str | None = None) -> None:
    if path is not None:
        page.goto(path)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    print(f"  {name}.png  {page.url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="facemint-shots-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = start(data_dir, port)
        try:
            demo = json.loads((data_dir / "demo.json").read_text())
            activity(base, demo, data_dir)
            with sync_playwright() as driver:
                browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 860})
                page = context.new_page()
                shoot(page, args.out, "sign-in", "/admin/sign-in")
                sign_in(page, demo["admin"]["email"], demo["admin"]["password"])
                tenant, alice = demo["tenant"]["id"], demo["alice"]["user_id"]
                for name, path in (
                    ("dashboard", "/admin/"),
                    ("tenants", "/admin/tenants"),
                    ("tenant", f"/admin/tenants/{tenant}"),
                    ("users", "/admin/users"),
                    ("user", f"/admin/users/{alice}"),
                    ("api-keys", "/admin/api-keys"),
                    ("recharges", "/admin/recharges"),
                    ("batches", "/admin/recharges/batches"),
                    ("approvals", "/admin/approvals"),
                    ("jobs", "/admin/jobs"),
                    ("finance-ledger", "/admin/finance/ledger"),
                    ("finance-daily", "/admin/finance/reports/daily"),
                    ("finance-liability", "/admin/finance/liability"),
                    ("audit", "/admin/audit"),
                    ("prices", "/admin/prices"),
                ):
                    shoot(page, args.out, name, path)
                page.goto("/admin/jobs")
                page.locator("table a[href*='/admin/jobs/']").first.click()
                shoot(page, args.out, "job")
                page.goto("/admin/recharges")
                bulk = page.locator("#bulk form")
                bulk.locator("input[type=file]").set_input_files(str(data_dir / "sample-recharge.csv"))
                bulk.locator("input[name=reason]").fill("loyalty bonus")
                bulk.get_by_role("button", name="Preview").click()
                page.wait_for_load_state("networkidle")
                shoot(page, args.out, "bulk-preview")
                page.goto("/admin/account")
                page.get_by_role("button", name="Enrol a second factor").click()
                shoot(page, args.out, "account-totp")
                # The approval, as the second operator sees it (the first may not approve its own).
                second = browser.new_context(base_url=base, viewport={"width": 1280, "height": 860}).new_page()
                sign_in(second, demo["ops2"]["email"], demo["ops2"]["password"])
                second.goto("/admin/approvals")
                second.locator("table a[href*='/admin/approvals/']").first.click()
                shoot(second, args.out, "approval")
                browser.close()
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
