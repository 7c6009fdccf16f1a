"""Login and lockout: the account limiter counts failed sign-ins only; failed authentications count against (and
are refused by) the address, never a valid key or token; IPv6 clients are counted per /64."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from facemint.app import create_app
from facemint.ratelimit import address_bucket
from facemint.users.orm import Role
from tests.conftest import make_settings
from tests.factories import bearer, create_user
from tests.platform.auth_helpers import login, problem, sign_in, works
from tests.platform.conftest import MakeCaller

GARBAGE_KEY = bearer("fmk_notarealkeyatall")


LimitedClient = Callable[..., TestClient]


@pytest.fixture
def limited_client(database_url: str, redis_url: str) -> Iterator[LimitedClient]:
    """`limited_client(**limits)`: a client on an app with these settings; the test client is a trusted proxy,
    so X-Forwarded-For sets the caller's address."""
    with ExitStack() as stack:

        def make(**overrides: object) -> TestClient:
            settings = make_settings(database_url, redis_url, trusted_proxies=["testclient"], **overrides)
            return stack.enter_context(TestClient(create_app(settings)))

        yield make


def from_address(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


class TestTheAccountLimiterCountsFailuresOnly:
    def test_successful_sign_ins_never_count(self, limited_client: LimitedClient, session: Session) -> None:
        client = limited_client(login_limit_per_account="3/minute")
        user = create_user(session, role=Role.member)
        for _ in range(5):
            assert login(client, user.email).status_code == 200
        for _ in range(2):
            problem(login(client, user.email, "wrong-password"), 401, "unauthorized")
        assert login(client, user.email).status_code == 200
        problem(login(client, user.email, "wrong-password"), 401, "unauthorized")
        # Three failures spend the account's bucket: now even the right password waits.
        response = problem(login(client, user.email), 429, "rate_limited")
        assert int(response["retry_after"]) >= 1

    def test_failures_against_one_account_leave_others_alone(
        self, limited_client: LimitedClient, session: Session
    ) -> None:
        client = limited_client(login_limit_per_account="2/minute")
        user, other = create_user(session, role=Role.member), create_user(session, role=Role.member)
        for _ in range(2):
            problem(login(client, user.email, "wrong-password"), 401)
        problem(login(client, user.email), 429, "rate_limited")
        assert login(client, other.email).status_code == 200


class TestAddressFailuresNeverLockOutValidCredentials:
    def test_a_valid_key_or_token_works_from_an_address_with_exhausted_failures(
        self, limited_client: LimitedClient, make_caller: MakeCaller
    ) -> None:
        client = limited_client(anonymous_limit_per_ip="3/minute")
        admin = make_caller(Role.platform_admin)
        token = sign_in(client, admin.user.email)
        statuses = [client.get("/v1/balance", headers=GARBAGE_KEY).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]  # a fuzzer behind the address is throttled
        assert works(client, admin.headers)  # the platform admin's key is not
        assert works(client, token)
        problem(client.get("/v1/balance", headers=GARBAGE_KEY), 429, "rate_limited")

    def test_valid_requests_do_not_count_as_failures(
        self, limited_client: LimitedClient, make_caller: MakeCaller
    ) -> None:
        client = limited_client(anonymous_limit_per_ip="3/minute")
        member = make_caller(Role.member)
        for _ in range(10):
            assert works(client, member.headers)
        assert [client.get("/v1/balance", headers=GARBAGE_KEY).status_code for _ in range(3)] == [401] * 3


class TestIpv6ClientsAreCountedPerSlash64:
    def test_sign_ins(self, limited_client: LimitedClient) -> None:
        client = limited_client(login_limit_per_ip="2/minute")
        for address in ("2001:db8:1:2::a", "2001:db8:1:2:ffff:ffff:ffff:fffe"):
            problem(login(client, "nobody@example.test", **from_address(address)), 401)
        # Another address of the same /64 shares the bucket; the next /64 does not.
        problem(login(client, "nobody@example.test", **from_address("2001:db8:1:2::b")), 429, "rate_limited")
        problem(login(client, "nobody@example.test", **from_address("2001:db8:1:3::a")), 401)

    def test_failed_authentications(self, limited_client: LimitedClient) -> None:
        client = limited_client(anonymous_limit_per_ip="2/minute")

        def attempt(address: str) -> int:
            return client.get("/v1/balance", headers={**GARBAGE_KEY, **from_address(address)}).status_code

        assert [attempt("2001:db8:9:9::1"), attempt("2001:db8:9:9:abcd::2")] == [401, 401]
        assert attempt("2001:db8:9:9::3") == 429
        assert attempt("2001:db8:9:a::1") == 401
        # An IPv4 client counts as itself, however it is written.
        assert [attempt("192.0.2.7"), attempt("::ffff:192.0.2.7"), attempt("192.0.2.7")] == [401, 401, 429]


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd:12::/64"),
        ("2001:DB8:abcd:12::ffff", "2001:db8:abcd:12::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("testclient", "testclient"),
        ("unknown", "unknown"),
    ],
)
def test_address_bucket(address: str, bucket: str) -> None:
    assert address_bucket(address) == bucket
