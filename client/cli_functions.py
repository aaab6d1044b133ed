"""`taskfabric function list|show|share|unshare`: your registered functions and their sharing.

Users are named by username (or user id), groups by id or by the name of a group you belong to.
Every command takes `--json` and then prints exactly one JSON document."""

from __future__ import annotations

import datetime
import json
from typing import Any

import click

from taskfabric.client.client import Client

__all__ = ["function", "group_id_of", "share", "show_function", "unshare"]


def group_id_of(client: Client, group: str) -> str:
    """A group id, given one or the name of a group the caller belongs to."""
    return str(client.resolve_group(group))


def show_function(client: Client, function_id: str) -> dict[str, Any]:
    """A function's metadata; with its sharing (`access`) when the caller owns it."""
    info = client.get_function(function_id)
    whoami = client.whoami()
    if info.get("owner") == whoami.get("username"):
        info["access"] = client.get_function_access(function_id)
    return info


def share(
    client: Client, function_id: str, *, users: tuple[str, ...], groups: tuple[str, ...], public: bool | None
) -> dict[str, Any]:
    """Share with each user and group (and make public when `public`); the new sharing."""
    access: dict[str, Any] = client.get_function_access(function_id)
    for user in users:
        access = client.share_function(function_id, user=user)
    for group in groups:
        access = client.share_function(function_id, group=group_id_of(client, group))
    if public is not None:
        access = client.share_function(function_id, public=public)
    return access


def unshare(
    client: Client, function_id: str, *, users: tuple[str, ...], groups: tuple[str, ...], private: bool
) -> dict[str, Any]:
    """Stop sharing with each user and group (and make private when `private`); the new sharing."""
    access: dict[str, Any] = client.get_function_access(function_id)
    for user in users:
        access = client.unshare_function(function_id, user=user)
    for group in groups:
        access = client.unshare_function(function_id, group=group_id_of(client, group))
    if private:
        access = client.unshare_function(function_id, public=False)
    return access


@click.group()
def function() -> None:
    """Your registered functions, and who they are shared with."""


@function.command(name="list")
@click.option("--shared", is_flag=True, help="Also other users' functions shared with you (or public).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of functions.")
def list_command(shared: bool, as_json: bool) -> None:
    """Your functions (and with --shared, those shared with you)."""
    with Client() as client:
        functions = client.list_functions(shared=shared)
    if as_json:
        click.echo(json.dumps(functions))
        return
    if not functions:
        click.echo("no functions")
    for info in functions:
        flags = " public" if info.get("public") else ""
        click.echo(f"{info['function_id']}  {info['name']:24} owner={info.get('owner', '')}{flags}")


@function.command()
@click.argument("function_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (with `access` for your own functions).")
def show(function_id: str, as_json: bool) -> None:
    """A function's metadata (yours or shared with you), and its sharing if it is yours."""
    with Client() as client:
        info = show_function(client, function_id)
    if as_json:
        click.echo(json.dumps(info))
        return
    for key, value in info.items():
        if key == "access":
            click.echo(f"{'shared:':14} {_access_line(value)}")
        elif key.endswith("_at") and isinstance(value, (int, float)):
            click.echo(
                f"{key + ':':14} {datetime.datetime.fromtimestamp(value).isoformat(sep=' ', timespec='seconds')}"
            )
        else:
            click.echo(f"{key + ':':14} {value}")


def _access_line(access: dict[str, Any]) -> str:
    names = [grant.get("user") or grant.get("user_id") or f"group {grant.get('group')}" for grant in access["grants"]]
    shown = ", ".join(str(name) for name in names) or "nobody"
    return f"{shown}{' (public: everyone)' if access.get('public') else ''}"


@function.command(name="share")
@click.argument("function_id")
@click.option("--user", "users", multiple=True, help="A username or user id (repeatable).")
@click.option("--group", "groups", multiple=True, help="A group id, or the name of a group of yours (repeatable).")
@click.option("--public", is_flag=True, help="Let every user of the service run it and read its metadata.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: the function's new sharing.")
def share_command(
    function_id: str, users: tuple[str, ...], groups: tuple[str, ...], public: bool, as_json: bool
) -> None:
    """Share your function with users or groups, or with everyone (--public)."""
    if not users and not groups and not public:
        raise click.UsageError("name at least one --user or --group, or give --public")
    with Client() as client:
        access = share(client, function_id, users=users, groups=groups, public=True if public else None)
    click.echo(json.dumps(access) if as_json else f"shared with {_access_line(access)}")


@function.command(name="unshare")
@click.argument("function_id")
@click.option("--user", "users", multiple=True, help="A username or user id (repeatable).")
@click.option("--group", "groups", multiple=True, help="A group id, or the name of a group of yours (repeatable).")
@click.option("--private", is_flag=True, help="No longer public (its grants stay).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: the function's new sharing.")
def unshare_command(
    function_id: str, users: tuple[str, ...], groups: tuple[str, ...], private: bool, as_json: bool
) -> None:
    """Stop sharing your function with users or groups, or make it private again (--private)."""
    if not users and not groups and not private:
        raise click.UsageError("name at least one --user or --group, or give --private")
    with Client() as client:
        access = unshare(client, function_id, users=users, groups=groups, private=private)
    click.echo(json.dumps(access) if as_json else f"shared with {_access_line(access)}")
