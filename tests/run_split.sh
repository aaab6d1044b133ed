#!/usr/bin/env bash
# The whole suite as two pytest processes running at once (`make test`). Most tests wait on real
# processes (brokers, forwarders, agents, schedulers, browsers) rather than compute, so two
# processes on CI's 2 cores finish the suite in far less wall time than one.
#
# Group A: the end-to-end tests, with every test that needs the private Slurm cluster (one Slurm
# per machine at a time). Group B: the fault campaign, the other integration tests, the unit
# tests and the end-to-end files listed in `e2e_in_b`. Each group has its own pytest temporary folder (under one mktemp folder in /tmp, as
# pytest's default), private RabbitMQ node and throwaway
# PostgreSQL database; ports are picked free. Nothing is skipped or deselected: the two groups
# together are exactly `pytest tests`. Extra arguments go to both pytest processes.
#
# Each group's output is written to build/tests-<group>.log and printed when it ends; the exit
# status is non-zero when either group failed.
set -u
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-.venv/bin/pytest}
mkdir -p build
temporary=$(mktemp -d /tmp/taskfabric-tests-XXXXXX)

slurm_files=(tests/integration/test_blocks_slurm.py tests/integration/test_slurm_cluster.py
  tests/integration/test_elastic_endpoints.py tests/integration/test_multi_user_slurm.py)
# end-to-end tests that run in group B, to balance the two groups' wall times (the slowest tests
# of each group are printed at the end of its log: move files here when one group grows)
e2e_in_b=(tests/e2e/forwarder)
# integration files that run in group A, for the same reason (the 3-node cluster's module)
integration_in_a=(tests/integration/test_broker_cluster.py)
group_a=(tests/e2e "${slurm_files[@]}" "${integration_in_a[@]}")
group_b=(tests/faults tests/integration tests/unit "${e2e_in_b[@]}")
for file in "${slurm_files[@]}" "${integration_in_a[@]}"; do group_b+=(--ignore="$file"); done
for file in "${e2e_in_b[@]}"; do group_a+=(--ignore="$file"); done

run_group() {  # name, then pytest arguments
  local name=$1
  shift
  "$PYTEST" --basetemp="$temporary/$name" -p no:cacheprovider "$@" > "build/tests-$name.log" 2>&1
}

run_group a "${group_a[@]}" "$@" &
pid_a=$!
run_group b "${group_b[@]}" "$@" &
pid_b=$!
wait "$pid_b"
status_b=$?
echo "=== group B (faults, integration, unit): exit $status_b ==="
cat build/tests-b.log
wait "$pid_a"
status_a=$?
echo "=== group A (end-to-end and Slurm): exit $status_a ==="
cat build/tests-a.log
if [ "$status_a" -ne 0 ] || [ "$status_b" -ne 0 ]; then
  echo "test groups failed: A exit $status_a, B exit $status_b"
  exit 1
fi
