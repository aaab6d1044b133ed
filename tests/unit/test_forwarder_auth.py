"""Tokens, the token cache and both providers' rules, on in-memory fakes (no network, no database)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any, cast

import pytest

from taskfabric.errors import AuthenticationError, PermissionDenied, ServiceError
from taskfabric.forwarder.auth import (
    TOKEN_PREFIX,
    AllowList,
    GlobusTokenProvider,
    LocalTokenProvider,
    TokenCache,
    hash_token,
    new_token,
)
from taskfabric.forwarder.records import Identity, TokenOwner, UserRecord
from taskfabric.forwarder.store.engine import StoreConflict
from taskfabric.forwarder.store.users import UserTable


class FakeUsers:
    """The parts of `UserTable` the providers use, in memory."""

    def __init__(self) -> None:
        self.by_hash: dict[str, Identity] = {}
        self.ensured: dict[uuid.UUID, str] = {}
        self.lookups = 0
        self.expires_at: dict[str, float] = {}
        self.disabled_at: dict[uuid.UUID, float] = {}
        self.touched: dict[str, float] = {}

    def token_owner(self, token_hash: str) -> TokenOwner | None:
        self.lookups += 1
        identity = self.by_hash.get(token_hash)
        if identity is None:
            return None
        return TokenOwner(
            identity=identity,
            token_id="id",
            expires_at=self.expires_at.get(token_hash),
            disabled_at=self.disabled_at.get(identity.user_id),
        )

    def touch_token(self, token_hash: str, *, now: float) -> None:
        self.touched[token_hash] = now

    def ensure(self, user_id: uuid.UUID, username: str, *, auth: str) -> UserRecord:
        self.ensured[user_id] = username
        disabled_at = self.disabled_at.get(user_id)
        return UserRecord(user_id=user_id, username=username, auth=auth, created_at=0.0, disabled_at=disabled_at)


class FakeIntrospection:
    def __init__(self) -> None:
        self.answers: dict[str, Mapping[str, Any]] = {}
        self.calls = 0

    def __call__(self, token: str) -> Mapping[str, Any]:
        self.calls += 1
        return self.answers.get(token, {"active": False})


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_new_tokens_are_random_prefixed_and_stored_as_sha256() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX)
        assert len(token) >= len(TOKEN_PREFIX) + 43  # 256 random bits
        digest = hash_token(token)
        assert digest == hashlib.sha256(token.encode()).hexdigest()
        assert token not in digest and len(digest) == 64
    assert hash_token("tf_a") == hash_token("tf_a") != hash_token("tf_b")


def test_local_provider_accepts_only_stored_hashes() -> None:
    users = FakeUsers()
    token = new_token()
    alice = Identity(user_id=uuid.uuid4(), username="alice", auth="local")
    users.by_hash[hash_token(token)] = alice
    provider = LocalTokenProvider(cast(UserTable, users))
    assert provider.authenticate(token) == alice
    for bad in (new_token(), token + "x", "not-ours", "tf_" + "a" * 5000):
        with pytest.raises(AuthenticationError) as refused:
            provider.authenticate(bad)
        assert refused.value.status == 401 and refused.value.code == "INVALID_TOKEN"
    assert users.lookups == 3  # tokens without our prefix (or absurdly long) never reach the store


def test_local_provider_refuses_expired_tokens_even_from_its_cache() -> None:
    users, clock = FakeUsers(), Clock()
    token = new_token()
    alice = Identity(user_id=uuid.uuid4(), username="alice", auth="local")
    users.by_hash[hash_token(token)] = alice
    users.expires_at[hash_token(token)] = clock.now + 10
    provider = LocalTokenProvider(cast(UserTable, users), cache_s=60, clock=clock)
    assert provider.authenticate(token) == alice
    assert provider.cached(token) == alice
    assert users.touched == {hash_token(token): clock.now}  # last use recorded
    clock.now += 10
    assert provider.cached(token) is None  # cached for 60 s, but it expired: not from the cache
    with pytest.raises(AuthenticationError) as refused:
        provider.authenticate(token)
    assert refused.value.status == 401 and refused.value.code == "TOKEN_EXPIRED"


def test_local_provider_refuses_tokens_of_a_disabled_user_with_403() -> None:
    users = FakeUsers()
    token = new_token()
    alice = Identity(user_id=uuid.uuid4(), username="alice", auth="local")
    users.by_hash[hash_token(token)] = alice
    users.disabled_at[alice.user_id] = 5.0
    provider = LocalTokenProvider(cast(UserTable, users))
    with pytest.raises(ServiceError) as refused:
        provider.authenticate(token)
    assert refused.value.status == 403 and refused.value.code == "USER_DISABLED"
    assert "alice" in str(refused.value) and users.touched == {}


def test_token_cache_expires_and_is_bounded() -> None:
    cache = TokenCache(max_entries=2)
    identities = [Identity(user_id=uuid.uuid4(), username=f"u{i}", auth="globus") for i in range(3)]
    cache.put("a", identities[0], expires_at=100)
    cache.put("b", identities[1], expires_at=200)
    assert cache.get("a", now=50) == identities[0]  # a is now the most recent
    cache.put("c", identities[2], expires_at=300)  # b goes
    assert cache.get("b", now=50) is None
    assert cache.get("a", now=100) is None  # expired
    assert cache.get("c", now=299) == identities[2]
    assert len(cache) == 1


def _globus(
    introspection: FakeIntrospection, clock: Clock, users: FakeUsers | None = None, **kwargs: Any
) -> GlobusTokenProvider:
    return GlobusTokenProvider(introspection, cast(UserTable, users or FakeUsers()), clock=clock, **kwargs)


def test_globus_active_tokens_are_accepted_and_cached_until_they_expire() -> None:
    introspection, clock, users = FakeIntrospection(), Clock(), FakeUsers()
    sub = uuid.uuid4()
    introspection.answers["tok"] = {"active": True, "sub": str(sub), "username": "ada@uni.example", "exp": 1060}
    provider = _globus(introspection, clock, users, cache_max_age_s=300)
    identity = provider.authenticate("tok")
    assert identity == Identity(user_id=sub, username="ada@uni.example", auth="globus")
    assert users.ensured == {sub: "ada@uni.example"}
    clock.now = 1059
    assert provider.authenticate("tok") == identity
    assert introspection.calls == 1
    clock.now = 1060  # the token's exp: ask again, and now it is expired
    with pytest.raises(AuthenticationError):
        provider.authenticate("tok")
    assert introspection.calls == 2


def test_globus_revalidation_never_answers_from_the_cache() -> None:
    introspection, clock = FakeIntrospection(), Clock()
    introspection.answers["tok"] = {"active": True, "sub": str(uuid.uuid4()), "username": "u", "exp": 10**9}
    provider = _globus(introspection, clock, cache_max_age_s=300)
    provider.authenticate("tok")
    provider.authenticate("tok")
    assert introspection.calls == 1
    introspection.answers["tok"] = {"active": False}  # revoked at Globus Auth
    with pytest.raises(AuthenticationError):
        provider.revalidate("tok")
    assert introspection.calls == 2


def test_globus_refuses_users_disabled_in_the_store_with_403() -> None:
    introspection, clock = FakeIntrospection(), Clock()
    sub = uuid.uuid4()
    introspection.answers["tok"] = {"active": True, "sub": str(sub), "username": "u", "exp": 10**9}
    users = FakeUsers()
    users.disabled_at[sub] = 1.0
    provider = GlobusTokenProvider(introspection, cast(UserTable, users), clock=clock)
    with pytest.raises(ServiceError) as refused:
        provider.authenticate("tok")
    assert refused.value.status == 403 and refused.value.code == "USER_DISABLED"


def test_globus_cache_age_is_bounded_even_for_long_lived_tokens() -> None:
    introspection, clock = FakeIntrospection(), Clock()
    introspection.answers["tok"] = {"active": True, "sub": str(uuid.uuid4()), "username": "u", "exp": 10**9}
    provider = _globus(introspection, clock, cache_max_age_s=60)
    provider.authenticate("tok")
    clock.now += 61
    provider.authenticate("tok")
    assert introspection.calls == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"active": False},
        {"active": "true", "sub": str(uuid.uuid4()), "exp": 2000},
        {"active": True, "sub": str(uuid.uuid4()), "exp": 999},
        {"active": True, "sub": str(uuid.uuid4())},
        {"active": True, "sub": "not-a-uuid", "exp": 2000},
        {"active": True, "sub": str(uuid.uuid4()), "exp": 2000, "scope": "openid email"},
    ],
)
def test_globus_refuses_inactive_expired_malformed_or_unscoped_tokens(answer: dict[str, Any]) -> None:
    introspection, clock = FakeIntrospection(), Clock()
    introspection.answers["tok"] = answer
    provider = _globus(introspection, clock, required_scope="taskfabric:all")
    with pytest.raises(AuthenticationError) as refused:
        provider.authenticate("tok")
    assert refused.value.code == "INVALID_TOKEN"
    with pytest.raises(AuthenticationError):
        provider.authenticate("tok")
    assert introspection.calls == 2  # refusals are not cached


def test_globus_outage_is_not_an_authentication_failure() -> None:
    def unreachable(token: str) -> Mapping[str, Any]:
        raise ServiceError("the identity provider is unreachable", status=503, code="AUTH_UNAVAILABLE")

    provider = GlobusTokenProvider(unreachable, cast(UserTable, FakeUsers()))
    with pytest.raises(ServiceError) as failed:
        provider.authenticate("tok")
    assert failed.value.status == 503
    with pytest.raises(AuthenticationError):
        provider.authenticate("")


def test_globus_refuses_tokens_issued_for_another_resource_server() -> None:
    introspection, clock = FakeIntrospection(), Clock()
    base = {"active": True, "sub": str(uuid.uuid4()), "username": "ada@uni.example", "exp": 2000}
    introspection.answers["ours"] = {**base, "aud": ["transfer.api.globus.org", "forwarder-client-id"]}
    introspection.answers["theirs"] = {**base, "aud": ["transfer.api.globus.org"]}
    introspection.answers["none"] = base
    provider = _globus(introspection, clock, audience="forwarder-client-id")
    assert provider.authenticate("ours").username == "ada@uni.example"
    for token in ("theirs", "none"):
        with pytest.raises(AuthenticationError, match="not issued for this service") as refused:
            provider.authenticate(token)
        assert refused.value.code == "INVALID_TOKEN"


def test_globus_refusals_are_remembered_for_the_negative_cache_window_only() -> None:
    introspection, clock = FakeIntrospection(), Clock()
    provider = _globus(introspection, clock, negative_cache_s=10)
    for _ in range(3):
        with pytest.raises(AuthenticationError, match="inactive"):
            provider.authenticate("bad")
    assert introspection.calls == 1
    clock.now += 10  # the window has passed: Globus Auth is asked again (the token may be valid now)
    sub = uuid.uuid4()
    introspection.answers["bad"] = {"active": True, "sub": str(sub), "username": "u@x.example", "exp": 5000}
    assert provider.authenticate("bad").user_id == sub
    assert introspection.calls == 2


def test_globus_outages_are_not_remembered_as_refusals() -> None:
    answers: list[Mapping[str, Any]] = []

    def flaky(token: str) -> Mapping[str, Any]:
        if not answers:
            answers.append({})
            raise ServiceError("the identity provider is unreachable", status=503, code="AUTH_UNAVAILABLE")
        return {"active": True, "sub": str(uuid.uuid4()), "username": "u", "exp": 5000}

    provider = GlobusTokenProvider(flaky, cast(UserTable, FakeUsers()), clock=Clock(), negative_cache_s=60)
    with pytest.raises(ServiceError):
        provider.authenticate("tok")
    assert provider.authenticate("tok").username == "u"


@pytest.mark.parametrize(
    ("username", "sub", "allowed"),
    [
        ("ada@uni.example", None, True),
        ("ADA@Uni.Example", None, True),
        ("eve@elsewhere.example", None, False),
        ("eve@sub.uni.example", None, False),  # a domain is matched exactly, not as a suffix
        ("bob@elsewhere.example", None, True),  # listed by username
        ("carol@elsewhere.example", "5b0a7d5e-2f4c-4d3e-9a59-0d2f0c3e7e11", True),  # listed by identity id
        ("nodomain", None, False),
    ],
)
def test_allow_list_table(username: str, sub: str | None, allowed: bool) -> None:
    allow = AllowList.of(["uni.example"], ["Bob@elsewhere.example", "5B0A7D5E-2F4C-4D3E-9A59-0D2F0C3E7E11"])
    identity_id = uuid.UUID(sub) if sub else uuid.uuid4()
    reason = allow.refusal(identity_id, username)
    assert (reason is None) is allowed
    if not allowed:
        assert reason is not None and "auth.allowed_domains" in reason and username in reason
    assert AllowList.of([], []).refusal(identity_id, username) is None  # no lists: everyone


def test_globus_refuses_identities_outside_the_allow_list_before_creating_a_user() -> None:
    introspection, clock, users = FakeIntrospection(), Clock(), FakeUsers()
    introspection.answers["eve"] = {"active": True, "sub": str(uuid.uuid4()), "username": "eve@x.example", "exp": 9e9}
    provider = _globus(introspection, clock, users, allow=AllowList.of(["uni.example"], []))
    with pytest.raises(PermissionDenied, match=r"'x\.example' is not in auth\.allowed_domains") as refused:
        provider.authenticate("eve")
    assert (refused.value.status, refused.value.code) == (403, "IDENTITY_NOT_ALLOWED")
    assert users.ensured == {}


def test_globus_username_collision_is_a_409_not_an_outage() -> None:
    class TakenUsers(FakeUsers):
        def ensure(self, user_id: uuid.UUID, username: str, *, auth: str) -> UserRecord:
            raise StoreConflict("creating user: conflicting write (UniqueViolation)")

    introspection, clock = FakeIntrospection(), Clock()
    introspection.answers["tok"] = {"active": True, "sub": str(uuid.uuid4()), "username": "ada@uni.example", "exp": 9e9}
    provider = _globus(introspection, clock, TakenUsers())
    with pytest.raises(ServiceError, match=r"'ada@uni\.example' .* is held by another Globus identity") as failed:
        provider.authenticate("tok")
    assert (failed.value.status, failed.value.code) == (409, "IDENTITY_CONFLICT")
