"""Multi-user endpoints: one endpoint on a shared resource serves many users, each as their own
local account.

DESIGN (the forwarder's half is in forwarder/user_endpoints.py; administrators read
docs/endpoint-owner.md, Multi-user endpoints).

- The *parent* (`config.yaml: multi_user: true`) runs as root or a service account allowed to
  switch users (`privilege.require_privilege`), with its own connection.json (root's, 0600, in a
  0700 folder). It consumes no tasks: it reads its control queue, where the forwarder sends one
  `StartUserEndpoint` per (user, user_endpoint_config) with tasks waiting, and heartbeats like any
  agent (the endpoint shows online).
- Sharing decides *who* may submit (the forwarder, before anything is stored); the parent's
  `identity_mapping` decides *as whom* (`mapping.py`): no rule, a nonexistent account, uid 0 or a
  `deny_accounts` entry refuses the user, whose waiting tasks are answered with
  IDENTITY_NOT_MAPPED / ACCOUNT_NOT_ALLOWED naming the endpoint (`refusal.py`); nothing runs.
- The user's `user_endpoint_config` is checked against `user_config_schema.json` and rendered
  into `user_config_template.yaml.j2` in a sandbox, its values shell-quoted (`user_config.py`);
  a bad value is USER_CONFIG_INVALID naming the field, and nothing starts.
- Each *user endpoint* is an ordinary agent (interchange, scaling, managers, workers) started as
  the mapped account (`privilege.start_as`: setgroups/setgid/setuid, the account's HOME and a
  minimal environment) in its own folder (`~account/.taskfabric/user_endpoints/<id>/`, or
  `user_endpoints_root/<account>/<id>/`, 0700, the account's), with a connection.json holding
  broker credentials for its own queues only. Its tasks can read those (they run as the same
  account), which gives them nothing beyond their own user's queues; they cannot read the
  parent's credentials (root's file, root's process) or another account's folder.
- A user endpoint stops itself after `idle_shutdown_s` without tasks; the parent starts it again
  (also after a crash) on the next start command; `endpoint stop` stops the parent, which stops
  every user endpoint gracefully first (`children.py`). `endpoint status` lists them from the
  parent's `user_endpoints.json`.
"""

from __future__ import annotations

__all__: list[str] = []
