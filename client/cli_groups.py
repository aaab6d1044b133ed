"""`taskfabric group create|list|show|add|remove|delete`: groups of users to share endpoints and
functions with (a group is named by name among your groups, or by id).

Thin click commands over the plain functions below (tests call those directly)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import click

from taskfabric.client.client import Client

__all__ = ["add_member", "create_group", "delete_group", "group", "group_details", "list_groups", "remove_member"]

_ROLES = ("member", "manager")


def create_group(client: Client, name: str, description: str = "") -> dict[str, Any]:
    return client.create_group(name, description)


def list_groups(client: Client) -> list[dict[str, Any]]:
    return client.list_groups()


def group_details(client: Client, name_or_id: str) -> dict[str, Any]:
    return client.get_group(client.resolve_group(name_or_id))


def add_member(client: Client, name_or_id: str, user: str, role: str = "member") -> dict[str, Any]:
    return client.add_group_member(client.resolve_group(name_or_id), user, role=role)


def remove_member(client: Client, name_or_id: str, user: str) -> None:
    client.remove_group_member(client.resolve_group(name_or_id), user)


def delete_group(client: Client, name_or_id: str) -> str:
    """Delete the group; returns its id."""
    group_id = client.resolve_group(name_or_id)
    client.delete_group(group_id)
    return str(group_id)


@click.group()
def group() -> None:
    """Groups of users: create them, add and remove members (owner, manager, member roles)."""


@group.command(name="create")
@click.argument("name")
@click.option("--description", default="", help="A line saying what the group is for.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: the new group.")
def create_command(name: str, description: str, as_json: bool) -> None:
    """Create a group you own."""
    with Client() as client:
        created = create_group(client, name, description)
    if as_json:
        click.echo(json.dumps(created))
    else:
        click.echo(f"created group {created['name']} ({created['group_id']})")


@group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of your groups.")
def list_command(as_json: bool) -> None:
    """The groups you belong to, with your role in each."""
    with Client() as client:
        groups = list_groups(client)
    if as_json:
        click.echo(json.dumps(groups))
        return
    if not groups:
        click.echo("no groups")
        return
    click.echo(f"{'group':36}  {'name':24}  {'owner':16}  {'role':8}  members")
    for item in groups:
        click.echo(
            f"{item['group_id']:36}  {item['name']:24}  {item['owner']:16}  {item['role']:8}  {item['member_count']}"
        )


@group.command(name="show")
@click.argument("group_name")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: the group and its members.")
def show_command(group_name: str, as_json: bool) -> None:
    """A group (by name or id) and its members."""
    with Client() as client:
        details = group_details(client, group_name)
    if as_json:
        click.echo(json.dumps(details))
        return
    click.echo(f"group:       {details['name']} ({details['group_id']})")
    click.echo(f"owner:       {details['owner']}")
    click.echo(f"your role:   {details['role']}")
    if details.get("description"):
        click.echo(f"description: {details['description']}")
    click.echo(f"members ({len(details['members'])}):")
    for member in details["members"]:
        added = datetime.datetime.fromtimestamp(member["added_at"]).isoformat(sep=" ", timespec="seconds")
        click.echo(f"  {member['username']:24}  {member['role']:8}  added {added}")


@group.command(name="add")
@click.argument("group_name")
@click.argument("user")
@click.option("--role", type=click.Choice(_ROLES), default="member", show_default=True, help="The member's role.")
def add_command(group_name: str, user: str, role: str) -> None:
    """Add USER (username or user id) to a group, or change their role."""
    with Client() as client:
        member = add_member(client, group_name, user, role)
    click.echo(f"{member['username']} is a {member['role']} of {group_name}")


@group.command(name="remove")
@click.argument("group_name")
@click.argument("user")
def remove_command(group_name: str, user: str) -> None:
    """Remove USER from a group (yourself: leave it)."""
    with Client() as client:
        remove_member(client, group_name, user)
    click.echo(f"removed {user} from {group_name}")


@group.command(name="delete")
@click.argument("group_name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_command(group_name: str, yes: bool) -> None:
    """Delete a group you own; what was shared with it is no longer shared."""
    if not yes:
        click.confirm(f"delete group {group_name} and everything shared with it?", abort=True)
    with Client() as client:
        group_id = delete_group(client, group_name)
    click.echo(f"deleted group {group_name} ({group_id})")
