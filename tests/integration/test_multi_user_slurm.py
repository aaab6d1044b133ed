"""A multi-user endpoint whose user config template uses the real single-node Slurm provider: a
user's block is a Slurm job submitted by their user endpoint process, so it runs as the mapped
account (`squeue -u <account>` shows it) and its task sees that account; an unmapped user's task
ends with IdentityNotMapped and submits no job. Listed in tests/run_split.sh's slurm_files."""

from __future__ import annotations

import pwd
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from taskfabric.client import Executor, IdentityNotMapped
from taskfabric.testing import BrokerUnderTest, wait_until
from taskfabric.testing.accounts import LocalAccounts
from taskfabric.testing.multi_user import MultiUserFabric, multi_user_fabric
from taskfabric.testing.slurm import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the accounts cannot import this module

TEMPLATE = """\
heartbeat_period_s: 0.5
heartbeat_threshold_s: 5.0
status_period_s: 0.5
drain_timeout_s: 5
idle_shutdown_s: 60
scaling:
  workers_per_node: 1
  strategy_period_s: 0.5
provider:
  type: SlurmProvider
  partition: {{ partition | default("debug") }}
  exclusive: false
  init_blocks: 0
  min_blocks: 0
  max_blocks: 1
  walltime: "00:10:00"
  worker_init: export TF_PROJECT={{ project }}
  launcher:
    type: SingleNodeLauncher
"""
SCHEMA = {
    "type": "object",
    "properties": {"project": {"type": "string", "pattern": "^[a-z0-9]{1,16}$"}, "partition": {"const": "debug"}},
    "required": ["project"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def accounts() -> Iterator[LocalAccounts]:
    with LocalAccounts(prefix="tfms", count=2) as made:
        yield made


@pytest.fixture(scope="module")
def slurm_multi_user(
    broker: BrokerUnderTest,
    slurm_cluster: SlurmCluster,
    tmp_path_factory: pytest.TempPathFactory,
    accounts: LocalAccounts,
) -> Iterator[MultiUserFabric]:
    folder = tmp_path_factory.mktemp("multi-user-slurm")
    settings = {"user_endpoint_environment": dict(slurm_cluster.env_overrides)}  # sbatch needs SLURM_CONF
    with multi_user_fabric(broker, folder, accounts, template=TEMPLATE, schema=SCHEMA, settings=settings) as fabric:
        yield fabric


def who_and_project() -> tuple[int, str, str, str]:
    import os
    import pwd

    return os.getuid(), pwd.getpwuid(os.getuid()).pw_name, os.environ.get("SLURM_JOB_ID", ""), os.environ["TF_PROJECT"]


def _jobs_of(cluster: SlurmCluster, account: str) -> list[str]:
    return cluster.run("squeue", "--noheader", "-u", account, "--format=%i").split()


def test_multi_user_slurm_job_runs_as_the_mapped_account(
    slurm_multi_user: MultiUserFabric, slurm_cluster: SlurmCluster, accounts: LocalAccounts, tmp_path: Path
) -> None:
    account = accounts.names[0]
    with (
        slurm_multi_user.client(slurm_multi_user.alice) as client,
        Executor(slurm_multi_user.endpoint_id, client=client, user_endpoint_config={"project": "proj42"}) as executor,
    ):
        future = executor.submit(who_and_project)
        jobs = wait_until(lambda: _jobs_of(slurm_cluster, account), timeout_s=60, what=f"a Slurm job of {account}")
        uid, name, job_id, project = future.result(timeout=120)
    assert (uid, name, project) == (pwd.getpwnam(account).pw_uid, account, "proj42")
    assert job_id in jobs
    assert not _jobs_of(slurm_cluster, "root")
    with (
        slurm_multi_user.client(slurm_multi_user.carol) as client,
        Executor(slurm_multi_user.endpoint_id, client=client, user_endpoint_config={"project": "x"}) as executor,
        pytest.raises(IdentityNotMapped),
    ):
        executor.submit(who_and_project).result(timeout=60)
    assert not _jobs_of(slurm_cluster, accounts.names[1])
