"""Webhooks: URL checks against server-side request forgery, lookups bounded by a deadline, and Standard Webhooks
signing. Delivery is in test_webhooks_delivery.py, fair sharing in test_webhooks_fairness.py, leases in
test_webhooks_leases.py, the tenant secret's admin endpoints in test_webhooks_secret.py."""

from __future__ import annotations

import base64
import socket
import threading
import time
from typing import Any

import pytest

from facemint.tenants.orm import new_webhook_secret
from facemint.webhooks import service as webhooks
from facemint.webhooks.errors import InvalidWebhookUrl
from facemint.webhooks.urls import DeadlineResolver, ResolveTimeout
from tests.platform.webhook_helpers import PUBLIC_IP, resolver, wait_for

# --- URL checks ----------------------------------------------------------------------------------------------


class TestValidateWebhookUrl:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1/hook",
            "http://localhost.test/hook",  # resolves to loopback (fake resolver below)
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://[fd00:ec2::254]/",
            "http://10.0.0.5/",
            "http://172.16.3.4/",
            "http://192.168.1.10/",
            "http://100.64.0.1/",  # shared address space (carrier-grade NAT)
            "http://224.0.0.1/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://240.0.0.1/",
            "http://[fe80::1]/",
            "http://2130706433/",  # 127.0.0.1 in decimal
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a00:5]/",  # NAT64 of 10.0.0.5
            "http://[2002:c0a8:10a::]/",  # 6to4 of 192.168.1.10
            "http://256.1.1.1/",
            "file:///etc/passwd",
            "ftp://example.com/",
            "gopher://example.com/",
            "javascript:alert(1)",
            "http://user:pass@example.com/",
            "http://user@example.com/",
            "http://example.com\\@127.0.0.1/",
            "http:///path-only",
            "http://",
            "http://exa mple.com/",
            "http://example.com:0/",
            "http://example.com:70000/",
            "http://127.0.0.%31/",
            "http://unresolvable.test/",
            "http://mixed.test/",  # one public address and one private one
            "https://example.com/" + "a" * 2048,
        ],
    )
    def test_refused(self, url: str) -> None:
        resolve = resolver(
            {"example.com": [PUBLIC_IP], "localhost.test": ["127.0.0.1"], "mixed.test": [PUBLIC_IP, "10.1.2.3"]}
        )
        with pytest.raises(InvalidWebhookUrl) as info:
            webhooks.validate_webhook_url(url, allowed_networks=[], resolve=resolve)
        assert info.value.status_code == 422
        assert info.value.code == "invalid_webhook_url"

    def test_public_hosts_are_accepted_and_normalized(self) -> None:
        resolve = resolver({"hooks.example.com": [PUBLIC_IP, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]})
        check = webhooks.validate_webhook_url
        assert check("HTTPS://Hooks.Example.COM:443/in?x=1#frag", allowed_networks=[], resolve=resolve) == (
            "https://hooks.example.com/in?x=1"
        )
        assert check("http://hooks.example.com:8080", allowed_networks=[], resolve=resolve) == (
            "http://hooks.example.com:8080/"
        )
        assert check(f"http://{PUBLIC_IP}/x", allowed_networks=[]) == f"http://{PUBLIC_IP}/x"

    def test_allowed_networks_admit_loopback(self) -> None:
        with pytest.raises(InvalidWebhookUrl):
            webhooks.validate_webhook_url("http://127.0.0.1:9000/hook", allowed_networks=[])
        allowed = ["127.0.0.0/8"]
        assert webhooks.validate_webhook_url("http://127.0.0.1:9000/hook", allowed_networks=allowed) == (
            "http://127.0.0.1:9000/hook"
        )
        # The odd spellings are read as the address they mean, so they are allowed or refused like it.
        assert webhooks.validate_webhook_url("http://2130706433/", allowed_networks=allowed) == "http://127.0.0.1/"
        assert webhooks.validate_webhook_url("http://[::ffff:127.0.0.1]/", allowed_networks=allowed)
        resolve = resolver({"receiver.test": ["127.0.0.1"]})
        assert webhooks.validate_webhook_url("http://receiver.test/", allowed_networks=allowed, resolve=resolve)
        # Loopback being allowed admits nothing else.
        with pytest.raises(InvalidWebhookUrl):
            webhooks.validate_webhook_url("http://10.0.0.1/", allowed_networks=allowed)

    def test_metadata_services_are_refused_even_inside_allowed_networks(self) -> None:
        for url in ("http://169.254.169.254/", "http://metadata.google.internal/", "http://[fd00:ec2::254]/"):
            with pytest.raises(InvalidWebhookUrl):
                webhooks.validate_webhook_url(
                    url,
                    allowed_networks=["169.254.0.0/16", "fd00::/8"],
                    resolve=resolver({"metadata.google.internal": ["169.254.169.254"]}),
                )

    def test_real_resolver_refuses_localhost(self) -> None:
        with pytest.raises(InvalidWebhookUrl):
            webhooks.validate_webhook_url("http://localhost/", allowed_networks=[])


# --- Signing -------------------------------------------------------------------------------------------------


class TestSigning:
    # The reference vector from the Standard Webhooks specification.
    SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    TIMESTAMP = 1614265330
    BODY = b'{"test": 2432232314}'
    SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    def headers(self, signature: str | None = None, timestamp: int | None = None) -> dict[str, str]:
        return {
            "Webhook-Id": self.MSG_ID,
            "Webhook-Timestamp": str(timestamp or self.TIMESTAMP),
            "Webhook-Signature": signature or self.SIGNATURE,
        }

    def test_matches_the_specification_vector(self) -> None:
        assert webhooks.sign(self.SECRET, msg_id=self.MSG_ID, timestamp=self.TIMESTAMP, body=self.BODY) == (
            self.SIGNATURE
        )
        assert webhooks.verify(self.SECRET, self.headers(), self.BODY, now=self.TIMESTAMP)

    def test_rejects_tampering_staleness_and_other_secrets(self) -> None:
        now = self.TIMESTAMP
        assert not webhooks.verify(self.SECRET, self.headers(), b'{"test": 2432232315}', now=now)
        assert not webhooks.verify(self.SECRET, self.headers(), self.BODY, now=now + 301)
        assert not webhooks.verify(self.SECRET, self.headers(), self.BODY, now=now - 301)
        assert webhooks.verify(self.SECRET, self.headers(), self.BODY, now=now + 299)
        # A fresh timestamp does not help a signature made for the old one.
        assert not webhooks.verify(self.SECRET, self.headers(timestamp=now + 100), self.BODY, now=now + 100)
        assert not webhooks.verify(new_webhook_secret(), self.headers(), self.BODY, now=now)
        assert not webhooks.verify(self.SECRET, {**self.headers(), "Webhook-Id": "msg_other"}, self.BODY, now=now)
        assert not webhooks.verify(self.SECRET, {"webhook-id": self.MSG_ID}, self.BODY, now=now)
        assert not webhooks.verify(self.SECRET, self.headers(timestamp=0) | {"webhook-timestamp": "x"}, self.BODY)
        assert not webhooks.verify(self.SECRET, self.headers(signature="v1,"), self.BODY, now=now)

    def test_any_of_several_signatures_may_match(self) -> None:
        other = webhooks.sign(new_webhook_secret(), msg_id=self.MSG_ID, timestamp=self.TIMESTAMP, body=self.BODY)
        both = f"{other} {self.SIGNATURE}"
        assert webhooks.verify(self.SECRET, self.headers(signature=both), self.BODY, now=self.TIMESTAMP)
        assert not webhooks.verify(self.SECRET, self.headers(signature=other), self.BODY, now=self.TIMESTAMP)

    def test_new_secrets_are_32_random_bytes(self) -> None:
        secret = new_webhook_secret()
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
        assert secret != new_webhook_secret()


# --- Lookups bounded by a deadline ---------------------------------------------------------------------------


class TestDeadlineResolver:
    def test_one_tenants_hanging_lookups_do_not_hold_up_another(self) -> None:
        released = threading.Event()
        answer = resolver({"fast.test": [PUBLIC_IP]})

        def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            if host.startswith("hang"):
                released.wait(10)
                host = "fast.test"
            return answer(host, port)

        lookups = DeadlineResolver(resolve, max_pending=10, max_pending_per_key=2)
        try:
            for name in ("hang-1.test", "hang-2.test"):
                started = time.monotonic()
                with pytest.raises(ResolveTimeout, match="deadline"):
                    lookups.until(time.monotonic() + 0.2, key="tenant-a")(name, 443)
                assert time.monotonic() - started < 1
            assert lookups.pending() == 2  # getaddrinfo cannot be interrupted: both still hang
            # A third of the same tenant's is refused at once rather than queued behind them ...
            started = time.monotonic()
            with pytest.raises(ResolveTimeout, match="earlier lookups"):
                lookups.until(time.monotonic() + 5, key="tenant-a")("hang-3.test", 443)
            assert time.monotonic() - started < 0.5
            # ... while another tenant's lookups go ahead.
            [info] = lookups.until(time.monotonic() + 5, key="tenant-b")("fast.test", 443)
            assert info[4] == (PUBLIC_IP, 443)
        finally:
            released.set()
        wait_for(lambda: lookups.pending() == 0, timeout=5)
        # Resolver errors pass through as they are (the URL check turns them into "cannot be resolved").
        with pytest.raises(socket.gaierror):
            lookups.until(time.monotonic() + 5, key="tenant-a")("unknown.test", 443)
