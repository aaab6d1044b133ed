"""Identity mapping: which local account a submitter's tasks run as (config.yaml `identity_mapping`).

Either ordered `rules` (the first whose `match` regular expression matches the whole value of its
`source` gives the account through its `output` template: `{0}` is the first group, or the whole
match when there is none; `{name}` a named group) or a `program` (run without a shell;
the identity as JSON on stdin; the account on its first stdout line; a non-zero exit or no output
means unmapped). Then the account is checked: it must exist, must not be uid 0 nor below `min_uid`
(system accounts) and must not be in `deny_accounts`. Mapping decides *as whom*; sharing
(forwarder/access.py) decided *who may submit*.
"""

from __future__ import annotations

import dataclasses
import json
import pwd
import re
import shlex
import subprocess
from typing import Any

from taskfabric.errors import ErrorCode

__all__ = ["ACCOUNT_NAME", "IdentityMapping", "MappingRefused", "MappingRule", "UserIdentity"]

#: what a local account name may look like (POSIX portable user names)
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_SOURCES = ("username", "identity_username", "identity_sub")
#: how long a mapping program may take
PROGRAM_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UserIdentity:
    """The submitter, as the forwarder named them in the start command."""

    username: str
    user_id: str
    identity_username: str = ""
    identity_sub: str = ""

    def value(self, source: str) -> str:
        return str(getattr(self, source))


class MappingRefused(Exception):
    """The submitter's tasks must not run: `code` is IDENTITY_NOT_MAPPED or ACCOUNT_NOT_ALLOWED."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class MappingRule:
    source: str
    match: re.Pattern[str]
    output: str

    def apply(self, identity: UserIdentity) -> str | None:
        found = self.match.fullmatch(identity.value(self.source))
        if found is None:
            return None
        positional = found.groups(default="") or (found.group(0),)  # {0}: the first group (or the whole match)
        return self.output.format(*positional, **found.groupdict(default=""))


@dataclasses.dataclass(frozen=True, slots=True)
class IdentityMapping:
    rules: tuple[MappingRule, ...]
    program: tuple[str, ...] | None
    deny_accounts: frozenset[str]
    #: accounts with a lower uid (system accounts) are refused
    min_uid: int = 1

    @classmethod
    def from_config(cls, data: dict[str, Any] | None, *, deny_accounts: list[str], min_uid: int = 1) -> IdentityMapping:
        """Validate `identity_mapping` (a `ValueError` names the bad key)."""
        if not isinstance(data, dict) or not data:
            raise ValueError("identity_mapping: a multi_user endpoint needs `rules` or `program`")
        unknown = set(data) - {"rules", "program"}
        if unknown:
            raise ValueError(f"identity_mapping: unknown key {sorted(unknown)[0]!r} (expected rules or program)")
        if ("rules" in data) == ("program" in data):
            raise ValueError("identity_mapping: give exactly one of `rules` or `program`")
        program = _program(data["program"]) if "program" in data else None
        rules = (
            tuple(_rule(item, index) for index, item in enumerate(_rule_list(data["rules"]))) if program is None else ()
        )
        return cls(
            rules=rules, program=program, deny_accounts=frozenset(deny_accounts) | {"root"}, min_uid=max(min_uid, 1)
        )

    def account_for(self, identity: UserIdentity) -> pwd.struct_passwd:
        """The checked local account of `identity`; `MappingRefused` otherwise."""
        name = self._map(identity)
        if name is None:
            raise MappingRefused(ErrorCode.IDENTITY_NOT_MAPPED, f"user {identity.username!r} maps to no local account")
        if not ACCOUNT_NAME.fullmatch(name):
            raise MappingRefused(ErrorCode.ACCOUNT_NOT_ALLOWED, f"the mapping gave {name!r}, not an account name")
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            raise MappingRefused(
                ErrorCode.ACCOUNT_NOT_ALLOWED, f"user {identity.username!r} maps to {name!r}, which does not exist here"
            ) from None
        if account.pw_uid == 0 or name in self.deny_accounts:
            raise MappingRefused(
                ErrorCode.ACCOUNT_NOT_ALLOWED,
                f"user {identity.username!r} maps to {name!r}, which tasks may never run as (uid 0 or deny_accounts)",
            )
        if account.pw_uid < self.min_uid:
            raise MappingRefused(
                ErrorCode.ACCOUNT_NOT_ALLOWED,
                f"user {identity.username!r} maps to {name!r}, a system account (uid {account.pw_uid} is below "
                f"min_uid {self.min_uid})",
            )
        return account

    def _map(self, identity: UserIdentity) -> str | None:
        if self.program is not None:
            return _run_program(self.program, identity)
        for rule in self.rules:
            name = rule.apply(identity)
            if name is not None:
                return name
        return None


def _rule_list(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ValueError("identity_mapping.rules: expected a non-empty list of {match, output} rules")
    return value


def _rule(item: Any, index: int) -> MappingRule:
    key = f"identity_mapping.rules[{index}]"
    if not isinstance(item, dict):
        raise ValueError(f"{key}: expected a map with match and output")
    unknown = set(item) - {"source", "match", "output"}
    if unknown:
        raise ValueError(f"{key}: unknown key {sorted(unknown)[0]!r}")
    source = item.get("source", "username")
    if source not in _SOURCES:
        raise ValueError(f"{key}.source: expected one of {', '.join(_SOURCES)}, got {source!r}")
    match, output = item.get("match"), item.get("output")
    if not isinstance(match, str) or not isinstance(output, str) or not output:
        raise ValueError(f"{key}: match and output must be strings")
    try:
        pattern = re.compile(match)
    except re.error as exc:
        raise ValueError(f"{key}.match: not a regular expression ({exc})") from None
    try:  # every placeholder must name a group the pattern has
        groups = ["x"] * max(pattern.groups, 1)
        output.format(*groups, **dict.fromkeys(pattern.groupindex, "x"))
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(f"{key}.output: {exc!r} is not a group of match") from None
    return MappingRule(source=source, match=pattern, output=output)


def _program(value: Any) -> tuple[str, ...]:
    command = shlex.split(value) if isinstance(value, str) else value
    if not isinstance(command, list) or not command or not all(isinstance(part, str) for part in command):
        raise ValueError("identity_mapping.program: expected a command (a string or a list of strings)")
    return tuple(command)


def _run_program(command: tuple[str, ...], identity: UserIdentity) -> str | None:
    try:
        done = subprocess.run(
            list(command),
            input=json.dumps(dataclasses.asdict(identity)),
            capture_output=True,
            text=True,
            timeout=PROGRAM_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None
    return lines[0].strip()
