"""Elastic blocks of managers: the scaling strategy, applied through a Parsl provider on a thread of
its own (provider calls such as `sbatch` block; the agent's loop never waits on them).

Every `strategy_period_s` the thread polls the provider (a block the scheduler ended — walltime,
`scancel`, a crash — is reported to the loop, which treats its managers as lost), asks `decide()`
what to do with the demand and capacity the loop last observed, and applies it: new blocks are
submitted; blocks to scale in are first handed to the loop to drain (their managers get no new
tasks and leave when idle) and cancelled once they have no managers (or after a grace period).

The loop and this thread share only: `observe()` (loop -> thread), and the queues behind
`ended_blocks()` and `blocks_to_drain()` (thread -> loop), plus `status()`.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

from taskfabric.endpoint_agent.block_types import BlockState, EndReason
from taskfabric.endpoint_agent.blocks import BlockActivity, BlockManager, BlockRecord
from taskfabric.endpoint_agent.launch import ManagerLaunch
from taskfabric.endpoint_agent.providers import BlockConfig, build_provider, render_block_command
from taskfabric.endpoint_agent.strategy import ScalingPolicy, ScalingSnapshot, decide, initial_blocks
from taskfabric.errors import ConfigError, ProviderError

__all__ = ["BlockScaler", "Scaler", "ScalerStatus"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class ScalerStatus:
    pending: int = 0
    running: int = 0
    last_decision: str = ""
    #: the live (pending and running) blocks, oldest first
    live: tuple[BlockRecord, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class _Observation:
    waiting: int = 0
    outstanding: int = 0
    activity: Mapping[str, BlockActivity] = dataclasses.field(default_factory=dict)


class BlockScaler(Protocol):
    """What the agent's loop needs of its scaler: `Scaler`, or a stand-in in unit tests."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def observe(self, *, waiting: int, outstanding: int, activity: Mapping[str, BlockActivity]) -> None: ...

    def ended_blocks(self) -> list[tuple[str, str]]: ...

    def blocks_to_drain(self) -> list[str]: ...

    def status(self) -> ScalerStatus: ...

    def failure(self) -> BaseException | None: ...


class Scaler:
    """Starts, scales and stops the endpoint's blocks."""

    def __init__(
        self,
        blocks: BlockConfig,
        launch: ManagerLaunch,
        run_dir: Path,
        *,
        wake: Callable[[], None],
        backlog: Callable[[], int],
        drain_grace_s: float,
    ) -> None:
        self._config = blocks
        self._launch = launch
        self._run_dir = run_dir
        self._wake = wake
        self._backlog = backlog
        self._drain_grace_s = drain_grace_s
        self._policy = ScalingPolicy.from_config(blocks.provider.block, blocks.scaling)
        self._manager: BlockManager | None = None
        self._lock = threading.Lock()
        self._observed = _Observation()
        self._ended: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._to_drain: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._draining: dict[str, float] = {}  # block id -> when it was asked to drain
        self._status = ScalerStatus()
        self._seen_managers: set[str] = set()  # blocks whose managers ever connected
        self._failures_in_a_row = 0
        self._hold_until = 0.0  # no scale-out before this (monotonic) after repeated failed starts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scaler", daemon=True)
        self.error: BaseException | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop scaling and cancel every block (the loop has drained them first)."""
        self._stop.set()
        self._thread.join(timeout=60)
        if self._manager is not None:
            live = [record.block_id for record in self._manager.snapshot().blocks if record.state != BlockState.ENDED]
            if live:
                try:
                    self._manager.cancel(live)
                except ProviderError as exc:
                    log.error("could not cancel blocks %s: %s", live, exc)
                    return
                for block_id in live:
                    self._remove_block_files(block_id)

    def failure(self) -> BaseException | None:
        """What ended the scaling thread for good (None while it runs): the agent then stops."""
        return self.error

    def _run(self) -> None:
        """The scaling thread. A failing step is logged and retried next period; anything else
        escaping is logged and kept in `error` for the agent's loop (woken now), which stops the
        agent with `RET_CRASHED` so its supervisor starts a fresh one, instead of running on
        without scaling."""
        try:
            self._scale_until_stopped()
        except Exception as exc:
            log.exception("the scaling thread stopped on an unexpected error")
            self.error = exc
            self._wake()

    def _scale_until_stopped(self) -> None:
        try:
            provider = build_provider(self._config.provider, script_dir=self._run_dir / "submit_scripts")
        except ConfigError as exc:
            log.error("cannot start blocks: %s", exc)
            self.error = exc
            self._wake()
            return
        self._manager = BlockManager(provider, label="taskfabric")
        count = initial_blocks(self._config.provider.block)
        if self._submit(count, "initial blocks"):
            self._record_decision(f"started {count} initial block(s) (init_blocks/min_blocks)")
        while not self._stop.wait(self._config.scaling.strategy_period_s):
            try:
                self._step()
            except Exception:  # one bad step must not end scaling for good
                log.exception("scaling step failed; trying again next period")

    def _step(self) -> None:
        manager = self._manager
        assert manager is not None
        try:
            changes = manager.poll()
        except ProviderError as exc:
            log.warning("could not poll blocks: %s", exc)
            return
        for change in changes:
            if change.new == BlockState.ENDED:
                record = manager.snapshot().get(change.block_id)
                why = change.end_reason.value if change.end_reason else "ended"
                detail = f" ({record.message})" if record and record.message else ""
                self._draining.pop(change.block_id, None)
                self._note_end(change.block_id, why, detail)
                if change.end_reason != EndReason.FAILED:  # a failed block's output says why: kept
                    self._remove_block_files(change.block_id)
                self._ended.put((change.block_id, f"the scheduler reports it {why}{detail}"))
                self._wake()
        self._apply(self._decide(manager))
        self._cancel_drained(manager)
        self._refresh_status()

    def _refresh_status(self) -> None:
        if self._manager is None:
            return
        snapshot = self._manager.snapshot()
        with self._lock:
            self._status = dataclasses.replace(
                self._status,
                pending=len(snapshot.pending),
                running=len(snapshot.running),
                live=tuple(record for record in snapshot.blocks if record.state is not BlockState.ENDED),
            )

    def _decide(self, manager: BlockManager) -> tuple[int, tuple[str, ...], str]:
        with self._lock:
            observed = self._observed
        try:
            backlog = self._backlog()
        except Exception:  # the broker may be down: scale on what the agent holds
            backlog = 0
        views = [view for view in manager.snapshot().views(observed.activity) if view.block_id not in self._draining]
        decision = decide(
            ScalingSnapshot(
                now=time.time(),
                tasks_waiting=observed.waiting + backlog,
                tasks_outstanding=observed.outstanding,
                blocks=views,
            ),
            self._policy,
        )
        if decision.changes_anything:
            log.info("scaling: %s", decision.reason)
            with self._lock:
                self._status = dataclasses.replace(self._status, last_decision=decision.reason)
        return decision.scale_out, decision.scale_in, decision.reason

    def _note_end(self, block_id: str, why: str, detail: str) -> None:
        """Back off when blocks keep failing before any manager connects (a broken launch)."""
        with self._lock:
            seen = block_id in self._seen_managers
        if seen or why != "failed":
            self._failures_in_a_row = 0
            return
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= 3:
            hold_s = min(300.0, 10.0 * 2 ** (self._failures_in_a_row - 3))
            self._hold_until = time.monotonic() + hold_s
            message = (
                f"{self._failures_in_a_row} blocks in a row failed before their manager connected{detail}; "
                f"see the job output in {self._run_dir / 'submit_scripts'}; next try in {hold_s:.0f} s"
            )
            log.error("%s", message)
            with self._lock:
                self._status = dataclasses.replace(self._status, last_decision=message)

    def _apply(self, decision: tuple[int, tuple[str, ...], str]) -> None:
        scale_out, scale_in, reason = decision
        if scale_out and time.monotonic() >= self._hold_until:
            self._submit(scale_out, reason)
        for block_id in scale_in:
            self._draining[block_id] = time.monotonic()
            self._to_drain.put(block_id)
        if scale_in:
            self._wake()

    def _cancel_drained(self, manager: BlockManager) -> None:
        """Cancel blocks asked to drain once their managers are gone (or after the grace period)."""
        with self._lock:
            activity = self._observed.activity
        now = time.monotonic()
        done = [
            block_id
            for block_id, asked_at in self._draining.items()
            if activity.get(block_id, BlockActivity()).managers == 0 or now - asked_at > self._drain_grace_s
        ]
        if not done:
            return
        try:
            manager.cancel(done)
        except ProviderError as exc:
            log.warning("could not cancel blocks %s: %s", done, exc)

    def _submit(self, count: int, reason: str) -> bool:
        """Submit `count` blocks; False when there was nothing to do or the provider refused."""
        if count <= 0 or self._manager is None:
            return False
        try:
            submitted = self._manager.submit_blocks(count, self._command)
        except ProviderError as exc:
            log.error("could not start blocks (%s): %s", reason, exc)
            self._record_decision(f"could not start blocks ({reason}): {exc}")
            return False
        log.info("started blocks %s (%s)", ", ".join(submitted), reason)
        self._refresh_status()
        return True

    def _record_decision(self, text: str) -> None:
        """What `status().last_decision` reports (the agent sends it with its status reports)."""
        with self._lock:
            self._status = dataclasses.replace(self._status, last_decision=text)

    def _remove_block_files(self, block_id: str) -> None:
        """Remove an ended block's log folder and its provider job files (script, output, exit code)."""
        shutil.rmtree(self._launch.log_dir(block_id), ignore_errors=True)
        label = self._manager.label if self._manager is not None else "taskfabric"
        for path in (self._run_dir / "submit_scripts").glob(f"{label}.{block_id}.*"):
            path.unlink(missing_ok=True)
        log.debug("removed the files of block %s", block_id)

    def _command(self, block_id: str) -> str:
        return render_block_command(self._launch.argv(block_id), rundir=self._run_dir, container=self._config.container)

    # --- calls from the agent loop ------------------------------------------------------

    def observe(self, *, waiting: int, outstanding: int, activity: Mapping[str, BlockActivity]) -> None:
        with self._lock:
            self._observed = _Observation(waiting, outstanding, dict(activity))
            self._seen_managers.update(block_id for block_id, seen in activity.items() if seen.managers)

    def ended_blocks(self) -> list[tuple[str, str]]:
        """(block id, why) for blocks the scheduler ended since the last call."""
        return _drain_queue(self._ended)

    def blocks_to_drain(self) -> list[str]:
        return _drain_queue(self._to_drain)

    def status(self) -> ScalerStatus:
        with self._lock:
            return self._status


def _drain_queue(source: queue.SimpleQueue[_T]) -> list[_T]:
    items: list[_T] = []
    while True:
        try:
            items.append(source.get_nowait())
        except queue.Empty:
            return items
