"""Runs a job attempt's ranks on a Ray cluster.

An attempt is one placement group (``<ns>-j<job>-a<attempt>``): bundle i holds rank i's
resources and is pinned, by the ``ray.io/node-id`` label, to the node Stoker's scheduler chose.
`launch` waits for the whole group (``ray.reserve_timeout``); a group that cannot be completed
is removed and `NotReserved` sends the job back to the queue: nothing starts in part. Each rank
is a detached, named actor (``<ns>-j<job>-a<attempt>-r<rank>``, `stoker.control.ray_rank`) in
that bundle, which runs the same entry point as the local executor under the same supervisor,
with the torch.distributed environment of its rank; the c10d store listens on rank 0's node.
Logs and exit files are on the shared path (``ray.shared_dir``), so a control plane that
restarts, or a standby that takes over, finds the actors by name and the exit files by path.

Ray is imported here and in `ray_rank` only: the local executor never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from stoker.control.executor import LaunchPlan, NotReserved, Orphan, ProcessStatus
from stoker.control.launch import WORK, exit_path
from stoker.control.local_executor import prepare_job_dir
from stoker.control.ray_nodes import ID_LABEL, RayNode, ray_nodes
from stoker.control.ray_rank import PYTHON, RankActor
from stoker.control.store import ProcessRecord
from stoker.control.supervise import read_exit
from stoker.sched import Node
from stoker.spec.cluster import ClusterConfig, RayConfig
from stoker.spec.errors import StokerError

log = logging.getLogger(__name__)

ACTOR_START_S = 120.0  # rank 0's actor up and answering (a cold node imports Ray and torch)
POLL_S = 5.0  # an actor that does not answer a poll this fast is busy, not dead


class RayUnavailable(StokerError):
    """Ray is not installed, or its cluster cannot be reached."""


class RayExecutor:
    per_rank = True

    def __init__(self, cluster: ClusterConfig, jobs_dir: Path, address: str | None = None,
                 hidden_env: Collection[str] = (), pass_env: Collection[str] = (),
                 allow_faults: bool = False) -> None:
        assert cluster.ray is not None
        self.cluster = cluster
        self.config: RayConfig = cluster.ray
        self.address = address or self.config.address
        self.jobs_dir = jobs_dir.resolve()
        self.hidden_env = tuple(hidden_env)
        self.pass_env = tuple(pass_env)
        self.allow_faults = allow_faults
        self.prefix = self.config.namespace
        self._names = re.compile(rf"^{re.escape(self.prefix)}-j(\d+)-a(\d+)(?:-r(\d+))?$")
        self._known: dict[str, RayNode] = {}
        self._actors: dict[tuple[int, int, int], Any] = {}

    # --- the cluster ----------------------------------------------------------------------------

    def connect(self) -> None:
        try:
            import ray
        except ImportError:
            raise RayUnavailable('executor = "ray" needs Ray: pip install "stoker[ray]"') \
                from None
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, namespace=self.config.namespace,
                     logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayUnavailable(f"cannot reach the Ray cluster at {self.address}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                 ) from None

    def ray_nodes(self) -> list[RayNode]:
        import ray

        self.connect()
        found = ray_nodes(ray.nodes(), self.cluster)  # type: ignore[no-untyped-call]
        self._known = {n.node.name: n for n in found}
        return found

    def nodes(self) -> list[Node]:
        """The scheduler's nodes: Ray's alive nodes now."""
        return [n.node for n in self.ray_nodes()]

    # --- starting -----------------------------------------------------------------------------

    def launch(self, plan: LaunchPlan) -> list[ProcessRecord]:
        import ray
        from ray.util.placement_group import placement_group

        self.connect()
        prepare_job_dir(plan, None)
        known = {n.node.name: n for n in self.ray_nodes()}
        gone = sorted({p.node for p in plan.processes if p.node not in known})
        if gone:
            raise NotReserved(f"node {gone[0]} left the Ray cluster")
        # A rank's request: its role's (the roles of a job differ).
        bundles = [_bundle(plan.rank_resources if p.resources is None else p.resources)
                   for p in plan.processes]
        name = self._gang(plan.job_id, plan.attempt)
        pg = placement_group(bundles, strategy="PACK", name=name,
                             lifetime="detached",
                             bundle_label_selector=[{ID_LABEL: known[p.node].node_id}
                                                    for p in plan.processes])
        asked = time.perf_counter()
        try:
            ray.get(pg.ready(), timeout=self.config.reserve_timeout)
        except ray.exceptions.GetTimeoutError:
            self._remove_group(name)
            nodes = ", ".join(sorted({p.node for p in plan.processes}))
            raise NotReserved(f"Ray could not reserve {_describe(bundles)} on "
                              f"{nodes} within {self.config.reserve_timeout:g}s") from None
        reserved = time.perf_counter() - asked
        try:
            return self._start(plan, pg, bundles, known[plan.processes[0].node], reserved)
        except BaseException:
            self.release(plan.job_id, plan.attempt)
            raise

    def _start(self, plan: LaunchPlan, pg: Any, bundles: Sequence[dict[str, float]],
               first_node: RayNode, reserved: float) -> list[ProcessRecord]:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        asked = time.perf_counter()
        remote: Any = ray.remote(RankActor)
        actors: list[Any] = []
        for p, bundle in zip(plan.processes, bundles, strict=True):
            actor = remote.options(
                name=self._rank(plan.job_id, plan.attempt, p.index), lifetime="detached",
                num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
                memory=bundle.get("memory"), max_restarts=0, max_concurrency=4,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, p.index),
            ).remote(self.pass_env, self.hidden_env, self.allow_faults)
            self._actors[(plan.job_id, plan.attempt, p.index)] = actor
            actors.append(actor)
        try:
            node_id, port = ray.get(actors[0].where.remote(), timeout=ACTOR_START_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as e:
            raise OSError(f"rank 0's Ray actor did not start: {type(e).__name__}") from None
        log.info("job %d attempt %d: reserved in %.3f s, rank 0's actor up in %.3f s",
                 plan.job_id, plan.attempt, reserved, time.perf_counter() - asked)
        if node_id != first_node.node_id:
            raise OSError(f"rank 0's Ray actor runs on node {node_id[:12]}, not on "
                          f"{first_node.node.name}")
        cwd = str(plan.workdir / WORK)
        ready: Any = 0
        first = plan.processes[0]
        if plan.prepare:
            ready = actors[0].prepare.remote(_argv(plan.prepare), first.env, cwd,
                                             str(first.log_path),
                                             str(first.exit_path.with_name("prepare.exit")))
        # Ray's address of the node: the one its other nodes reach it at.
        rendezvous = {"MASTER_ADDR": first_node.address, "MASTER_PORT": str(port)}
        started = time.time()
        for p, actor in zip(plan.processes, actors, strict=True):
            # ``ready`` is an object ref: Ray runs `start` once the preparation has ended.
            actor.start.remote(ready, _argv(p.argv), p.env | rendezvous, cwd, str(p.log_path),
                               str(p.exit_path))
        return [ProcessRecord(job_id=plan.job_id, attempt=plan.attempt, index=p.index, pid=0,
                              create_time=started, node=p.node, devices=p.devices,
                              log_path=str(p.log_path)) for p in plan.processes]

    # --- watching -----------------------------------------------------------------------------

    def status(self, proc: ProcessRecord, exit_file: Path) -> ProcessStatus:
        import ray

        recorded = read_exit(str(exit_file))
        if recorded is not None:
            return ProcessStatus("exited", recorded[0], recorded[1])
        actor = self._actor(proc.job_id, proc.attempt, proc.index)
        died = False
        if actor is not None:
            try:
                code = ray.get(actor.poll.remote(), timeout=POLL_S)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
                return ProcessStatus("alive")  # busy, or its node unreachable for now
            except ray.exceptions.RayActorError as e:
                died = "its node has died" in str(e)  # Ray's words; the node list may lag
            else:
                if code is None:
                    return ProcessStatus("alive")
                recorded = read_exit(str(exit_file))
                if recorded is not None:
                    return ProcessStatus("exited", recorded[0], recorded[1])
                return ProcessStatus("exited", code, time.time())  # the supervisor was killed
        recorded = read_exit(str(exit_file))
        if recorded is not None:
            return ProcessStatus("exited", recorded[0], recorded[1])
        if died or proc.node not in {n.node.name for n in self.ray_nodes()}:
            return ProcessStatus("vanished", None, time.time(),
                                 f"its node {proc.node} left the Ray cluster", proc.node)
        return ProcessStatus("vanished", None, time.time(),
                             f"its Ray actor on node {proc.node} died")

    # --- signalling ---------------------------------------------------------------------------

    def terminate(self, proc: ProcessRecord) -> None:
        actor = self._actor(proc.job_id, proc.attempt, proc.index)
        if actor is not None:
            actor.signal.remote(signal.SIGTERM)

    def kill(self, proc: ProcessRecord) -> None:
        self._kill(proc.job_id, proc.attempt, proc.index)

    def _kill(self, job_id: int, attempt: int, index: int) -> None:
        import ray

        actor = self._actor(job_id, attempt, index)
        self._actors.pop((job_id, attempt, index), None)
        if actor is None:
            return
        # Dead, or not answering: killing the actor kills its rank all the same (``--parent``).
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(actor.kill.remote(), timeout=POLL_S)
        ray.kill(actor, no_restart=True)

    def release(self, job_id: int, attempt: int) -> None:
        """Kill what is left of the gang and remove its placement group."""
        for key in [k for k in self._actors if k[:2] == (job_id, attempt)]:
            self._kill(*key)
        for orphan in self.orphans():
            if (orphan.job_id, orphan.attempt) == (job_id, attempt) and orphan.index >= 0:
                self._kill(job_id, attempt, orphan.index)
        self._remove_group(self._gang(job_id, attempt))

    # --- adoption -----------------------------------------------------------------------------

    def orphans(self) -> list[Orphan]:
        """This namespace's rank actors and placement groups (index -1), whatever the store
        says."""
        import ray

        self.connect()
        found: list[Orphan] = []
        groups = [g.get("name", "") for g in ray.util.placement_group_table().values()
                  if g.get("state") != "REMOVED"]
        for name in (*ray.util.list_named_actors(), *groups):
            match = self._names.match(name)
            if match is None:
                continue
            job_id, attempt = int(match[1]), int(match[2])
            index = int(match[3]) if match[3] is not None else -1
            path = exit_path(self.jobs_dir, job_id, attempt, index) if index >= 0 \
                else self.jobs_dir
            found.append(Orphan(0, 0.0, job_id, attempt, index, path))
        return found

    def kill_orphan(self, orphan: Orphan) -> None:
        if orphan.index < 0:
            self._remove_group(self._gang(orphan.job_id, orphan.attempt))
        else:
            self._kill(orphan.job_id, orphan.attempt, orphan.index)

    # --- names ----------------------------------------------------------------------------------

    def _gang(self, job_id: int, attempt: int) -> str:
        return f"{self.prefix}-j{job_id}-a{attempt}"

    def _rank(self, job_id: int, attempt: int, index: int) -> str:
        return f"{self._gang(job_id, attempt)}-r{index}"

    def _actor(self, job_id: int, attempt: int, index: int) -> Any:
        """The rank's actor handle; None when no actor of that name lives."""
        import ray

        key = (job_id, attempt, index)
        if key not in self._actors:
            self.connect()
            try:
                self._actors[key] = ray.get_actor(self._rank(*key))
            except ValueError:
                return None
        return self._actors[key]

    def _remove_group(self, name: str) -> None:
        import ray
        from ray.util.placement_group import get_placement_group, remove_placement_group

        with contextlib.suppress(ValueError, ray.exceptions.RayError):  # already removed
            remove_placement_group(get_placement_group(name))


RAY_NAMES = {"gpu": "GPU", "cpu": "CPU", "memory": "memory"}  # any other: Ray's custom resource


def _bundle(amounts: Mapping[str, float]) -> dict[str, float]:
    """A rank's request as a Ray bundle: GPU, CPU, memory, and each other resource under its
    own name (a Ray custom resource of the same name, e.g. ``example.com/gpu``)."""
    bundle = {RAY_NAMES.get(name, name): v for name, v in amounts.items() if v > 0}
    return bundle or {"CPU": 0.001}  # Ray refuses an empty bundle


def _describe(bundles: Sequence[dict[str, float]]) -> str:
    """``2 x {'CPU': 1.0}``, or one such term per distinct bundle (the roles of a job)."""
    counts: dict[str, int] = {}
    for b in bundles:
        counts[str(b)] = counts.get(str(b), 0) + 1
    return " + ".join(f"{n} x {b}" for b, n in counts.items())


def _argv(argv: Sequence[str]) -> list[str]:
    """The control plane's Python becomes the node's own."""
    return [PYTHON if i == 0 and a == sys.executable else a for i, a in enumerate(argv)]
