"""The fault campaign: one real fabric (private broker node, forwarder, two endpoint agents under
their supervisors, TCP fault proxies), one fault per case, a workload of attributable tasks
submitted through the `Executor`, and a history check. Each case prints one line of counts
(`FAULT CASE ...`) and fails on any lost, reported-twice, wrong or pending-forever task.

The invariant (docs/failure-guarantees.md): every task the client saw accepted ends in exactly one
outcome visible to the client, a result or a typed error. Re-execution is allowed (counted as
ran_twice); a refused submit is a typed error to the client, not a loss.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from typing import Any

import pytest

from taskfabric.client import Client
from taskfabric.errors import AuthenticationError
from taskfabric.forwarder import create_token, revoke_tokens
from taskfabric.testing import wait_until
from taskfabric.testing.campaign import Campaign, Fault, assert_no_violation
from taskfabric.testing.disk import unwritable
from taskfabric.testing.history import CaseCounts
from taskfabric.testing.proxy import ProxyMode
from taskfabric.testing.queues import make_leaderless

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_worker_killed_mid_task(campaign: Campaign) -> None:
    def kill_workers() -> None:
        victims = campaign.agent().workers()
        assert victims, "no worker to kill"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)

    counts = campaign.run_case("worker-kill-9", Fault(kill_workers), delay_s=0.05)
    assert_no_violation(counts)


@pytest.mark.every_queue_type
def test_the_agent_killed_and_restarted_by_its_supervisor(campaign: Campaign) -> None:
    killed: list[int] = []

    def kill_agent() -> None:
        pid = campaign.agent_pid()
        assert pid is not None
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)

    def restarted() -> None:
        wait_until(
            lambda: campaign.agent_pid() not in (None, *killed), timeout_s=60, what="the supervisor restarting it"
        )

    counts = campaign.run_case("agent-kill-9", Fault(kill_agent, restarted), measure_other=True)
    assert_no_violation(counts)


def test_the_forwarder_killed_and_restarted(campaign: Campaign) -> None:
    def kill_forwarder() -> None:
        pid = campaign.forwarder.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    counts = campaign.run_case("forwarder-kill-9", Fault(kill_forwarder, campaign.restart_forwarder, hold_s=2.0))
    assert_no_violation(counts)


@pytest.mark.every_queue_type
def test_the_broker_node_killed_and_restarted(campaign: Campaign) -> None:
    counts = campaign.run_case("broker-kill-9", Fault(campaign.node.kill, campaign.node.start, hold_s=2.0))
    assert_no_violation(counts)


def test_the_endpoints_queues_left_leaderless_by_a_broker_crash(campaign: Campaign) -> None:
    """Issue 9's first case: the queues a crash left without a leader are found and rebuilt; tasks
    that were in the lost task queue end as TASK_QUEUE_LOST, never pending; results wait on the
    agent's disk and arrive after the rebuild."""
    log = campaign.forwarder.log_file
    endpoint_id = str(campaign.connection().endpoint_id)

    def rebuilds() -> int:
        return sum(1 for line in log.read_text().splitlines() if "rebuilt the broken" in line and endpoint_id in line)

    before = rebuilds()

    def break_queues() -> None:
        connection = campaign.connection()
        for queue in (connection.task_queue, connection.result_queue):
            make_leaderless(campaign.node, queue)

    def rebuilt() -> None:
        wait_until(lambda: rebuilds() > before, timeout_s=60, what="the forwarder rebuilding the queues")

    counts = campaign.run_case("queues-leaderless", Fault(break_queues, rebuilt), measure_other=True)
    assert_no_violation(counts)


@pytest.mark.every_queue_type
def test_the_broker_stopped_for_ten_seconds(campaign: Campaign) -> None:
    counts = campaign.run_case(
        "broker-stopped-10s", Fault(campaign.node.stop_app, campaign.node.start_app, hold_s=10.0)
    )
    assert_no_violation(counts)


@pytest.mark.every_queue_type
def test_an_agent_broker_partition(campaign: Campaign) -> None:
    proxy = campaign.agent_proxy
    counts = campaign.run_case(
        "agent-broker-partition-15s",
        Fault(lambda: proxy.set_mode(ProxyMode.BLACKHOLE), lambda: proxy.set_mode(ProxyMode.PASS), hold_s=15.0),
        measure_other=True,
    )
    assert_no_violation(counts)


@pytest.mark.every_queue_type
def test_a_forwarder_broker_partition(campaign: Campaign) -> None:
    proxy = campaign.forwarder_proxy
    counts = campaign.run_case(
        "forwarder-broker-partition-15s",
        Fault(lambda: proxy.set_mode(ProxyMode.BLACKHOLE), lambda: proxy.set_mode(ProxyMode.PASS), hold_s=15.0),
    )
    assert_no_violation(counts)


def test_connections_reset_then_reconnects_refused(campaign: Campaign) -> None:
    proxies = (campaign.agent_proxy, campaign.forwarder_proxy)

    def refuse() -> None:
        for proxy in proxies:
            proxy.set_mode(ProxyMode.RESET)
            proxy.set_mode(ProxyMode.REFUSE)

    def heal() -> None:
        for proxy in proxies:
            proxy.set_mode(ProxyMode.PASS)

    counts = campaign.run_case("reset-then-refused-8s", Fault(refuse, heal, hold_s=8.0))
    assert_no_violation(counts)


def test_a_slow_link(campaign: Campaign) -> None:
    """2.5 s each way on the agent's link: near the forwarder's offline threshold (3 s)."""
    proxy = campaign.agent_proxy
    counts = campaign.run_case(
        "slow-agent-link-2500ms",
        Fault(lambda: proxy.set_mode(ProxyMode.DELAY, delay_ms=2500), lambda: proxy.set_mode(ProxyMode.PASS), 10.0),
        tasks=100,
        measure_other=True,
    )
    assert_no_violation(counts)


def test_poison_payloads_amid_normal_tasks(campaign: Campaign) -> None:
    counts = campaign.run_case("poison-payloads", Fault(lambda: None), poison=True)
    assert_no_violation(counts)
    assert counts.errors == 2, counts.line()  # exactly the two poison tasks end in typed errors


def test_the_clients_token_revoked_mid_run(campaign: Campaign) -> None:
    """Revocation bites (issue 12): submits are refused from then on with a typed
    AuthenticationError, and the results stream opened with the token is closed, so the futures of
    accepted tasks still unfinished then fail with AuthenticationError too (the client being told,
    not an outcome: the tasks are not lost and their results wait in the store for a valid token).
    Nothing hangs, and no future fails any other way."""
    token = create_token(campaign.settings, campaign.username, description="revoked mid-run")

    def revoke() -> None:
        revoke_tokens(campaign.settings, campaign.username, token=token)
        with campaign.client(token) as client:
            wait_until(lambda: _refused(client), timeout_s=30, what="the service refusing the revoked token")

    counts = campaign.run_case("token-revoked", Fault(revoke, hold_s=2.0), token=token, delay_s=0.05)
    assert_no_violation(counts)
    assert counts.notes.get("auth_errors", 0) > 0, counts.line()
    accepted_told: Counter[str] = Counter()
    for kind in filter(None, str(counts.notes.get("errors_as", "")).split(",")):
        name, number = kind.rsplit(":", 1)
        accepted_told[name] += int(number)
    assert set(accepted_told) <= {"AuthenticationError/401"}, counts.line()
    assert counts.refused + sum(accepted_told.values()) == counts.notes["auth_errors"], counts.line()


def _refused(client: Client) -> bool:
    try:
        client.whoami()
    except AuthenticationError:
        return True
    return False


@pytest.mark.every_queue_type
def test_the_brokers_disk_alarm(campaign: Campaign) -> None:
    """The node's disk limit is set above the free space: RabbitMQ raises its disk alarm and blocks
    every publishing connection until the limit is set back."""
    node = campaign.node

    def alarm_raised() -> bool:
        return "disk" in node.ctl("eval", "rabbit_alarm:get_alarms().")

    def raise_alarm() -> None:
        node.ctl("set_disk_free_limit", "100000GB")
        wait_until(alarm_raised, timeout_s=30, interval_s=0.2, what="the disk alarm")

    def clear_alarm() -> None:
        node.ctl("set_disk_free_limit", "200MB")
        wait_until(lambda: not alarm_raised(), timeout_s=30, interval_s=0.2, what="the disk alarm to clear")

    counts = campaign.run_case("broker-disk-alarm-8s", Fault(raise_alarm, clear_alarm, hold_s=8.0))
    assert_no_violation(counts)


def test_a_forwarder_restart_during_a_large_batch_submit(campaign: Campaign) -> None:
    """2,000 tasks leave in one submit request; the forwarder is killed while it handles it. The
    client gets either the ids (then every task runs) or a typed error (then none was accepted)."""

    before = campaign.stored_tasks()

    def kill_forwarder() -> None:
        pid = campaign.forwarder.pid
        assert pid is not None
        # once the big batch's rows are in the store (they go in before the publish and the answer)
        wait_until(
            lambda: campaign.stored_tasks() > before + 10, timeout_s=30, interval_s=0.005, what="the batch stored"
        )
        os.kill(pid, signal.SIGKILL)

    def orphans(counts: CaseCounts) -> None:
        # rows of a request cut short, which the client never got ids for: not lost (never
        # accepted), but kept by the service as waiting tasks nobody will see an outcome of
        counts.notes["orphan_rows"] = campaign.stored_tasks() - before - counts.accepted

    counts = campaign.run_case(
        "forwarder-kill-9-during-batch-submit",
        Fault(kill_forwarder, campaign.restart_forwarder, hold_s=1.0),
        tasks=2010,
        before_fault=10,
        delay_s=0.0,
        fault_after_submit=True,
        annotate=orphans,
    )
    assert_no_violation(counts)


def test_the_agents_disk_unwritable_for_fifteen_seconds(campaign: Campaign) -> None:
    """The agent's ledger refuses writes (`chattr +i`, which stops root too) for 15 s: the agent
    stays up, the service shows the endpoint degraded with the reason, then online again."""
    frozen = contextlib.ExitStack()
    seen: list[dict[str, Any]] = []

    def status() -> dict[str, Any]:
        with campaign.client() as client:
            found: dict[str, Any] = client.get_endpoint_status(campaign.main)
            return found

    def freeze() -> None:
        frozen.enter_context(unwritable(campaign.endpoint_folder(), ["ledger.sqlite", "ledger.sqlite-wal"]))
        seen.append(wait_until(lambda: (s := status())["status"] == "degraded" and s, timeout_s=30, what="degraded"))

    def thaw() -> None:
        frozen.close()
        wait_until(lambda: status()["status"] == "online", timeout_s=30, what="online again")

    agent = campaign.agent_pid()
    counts = campaign.run_case("agent-ledger-unwritable-15s", Fault(freeze, thaw, hold_s=15.0), measure_other=True)
    assert_no_violation(counts)
    assert "ledger cannot write" in seen[0]["status_reason"]
    assert campaign.agent_pid() == agent  # the same agent process throughout
