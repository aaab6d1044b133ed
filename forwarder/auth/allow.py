"""Who may use the service at all: `auth.allowed_domains` and `auth.allowed_identities`.

Pure domain logic (no HTTP, no SQL): the Globus provider asks it about every identity it is about
to accept, before a user row is created, so a refused identity costs the store nothing. With both
lists empty everyone the identity provider vouches for is allowed (the default).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable

__all__ = ["AllowList"]


@dataclasses.dataclass(frozen=True, slots=True)
class AllowList:
    """Identities allowed by the domain of their username (`ada@uni.example` is in `uni.example`)
    or by name: an entry of `identities` is a Globus identity id (UUID) or a username."""

    domains: frozenset[str] = frozenset()
    identities: frozenset[str] = frozenset()

    @classmethod
    def of(cls, domains: Iterable[str], identities: Iterable[str]) -> AllowList:
        """Case-insensitive for domains and usernames (as Globus treats them); ids normalised."""
        return cls(
            domains=frozenset(domain.strip().lower().lstrip("@") for domain in domains),
            identities=frozenset(_normalised_identity(entry) for entry in identities),
        )

    @property
    def restricts(self) -> bool:
        return bool(self.domains or self.identities)

    def refusal(self, identity_id: uuid.UUID, username: str) -> str | None:
        """Why this identity may not use the service, or None when it may."""
        if not self.restricts:
            return None
        if str(identity_id) in self.identities or username.lower() in self.identities:
            return None
        domain = username.rpartition("@")[2].lower() if "@" in username else ""
        if domain and domain in self.domains:
            return None
        where = f"its domain {domain!r} is not" if domain else "it has no domain"
        return (
            f"identity {username!r} ({identity_id}) may not use this forwarder: {where} in auth.allowed_domains "
            "and it is not in auth.allowed_identities"
        )


def _normalised_identity(entry: str) -> str:
    entry = entry.strip()
    try:
        return str(uuid.UUID(entry))
    except ValueError:
        return entry.lower()
