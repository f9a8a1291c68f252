"""What one caller's scheduling cycles derive from the cluster, kept for its next cycle.

The node layout, the quota tree of the queues and cohorts, what the running jobs hold, and the
running jobs of each queue and flavor as victim candidates (in victim order, with running
totals) change little from one cycle to the next; rebuilt every cycle they would cost the size
of the cluster.
The caller (the reconciler, the simulator, a benchmark) owns one `SchedulerCache` and hands it to
every ``schedule(snapshot, policy, cache)``. The decisions are the same with or without it, and
with any earlier cycles: what is kept is reused only when it was built from the very same
(immutable) objects, and otherwise rebuilt.

A cycle *takes* the quota tree, the holds and the victim candidates out of the cache and puts
them back when it is done, so two cycles running at once on one cache never share them (the
second builds its own).
"""

from __future__ import annotations

from collections.abc import Sequence

from stoker.sched.held import Held
from stoker.sched.nodes import Layout
from stoker.sched.preempt import Candidates
from stoker.sched.quota import QuotaTree
from stoker.sched.types import DEFAULT_SPACE, Cohort, Node, Queue, ResourceSpace, RunningJob

Victims = dict[tuple[str, str], Candidates]  # (queue, flavor) -> its running jobs as victims


class SchedulerCache:
    __slots__ = ("_held", "_layout", "_quota", "_victims")

    def __init__(self) -> None:
        self._layout: tuple[tuple[Node, ...], tuple[str, ...], Layout] | None = None
        self._quota: tuple[tuple[Queue, ...], tuple[Cohort, ...], QuotaTree] | None = None
        self._held: Held | None = None
        self._victims: tuple[Layout, QuotaTree, object, Victims] | None = None

    def layout(self, nodes: Sequence[Node], topology: tuple[str, ...],
               space: ResourceSpace = DEFAULT_SPACE) -> Layout:
        """The Layout of ``nodes``: a pure function of the node objects, so it is shared."""
        kept = self._layout
        if (kept is not None and kept[1] == topology and kept[2].space == space
                and same(kept[0], nodes)):
            return kept[2]
        built = Layout(nodes, topology, space)
        self._layout = (tuple(nodes), topology, built)
        return built

    def take_quota(self, queues: Sequence[Queue], cohorts: Sequence[Cohort],
                   space: ResourceSpace = DEFAULT_SPACE) -> QuotaTree:
        """A QuotaTree of ``queues`` and ``cohorts`` with no usage; the caller owns it until it
        gives it back with `keep`."""
        kept, self._quota = self._quota, None
        if (kept is not None and kept[2].size == len(space) and same(kept[0], queues)
                and same(kept[1], cohorts)):
            kept[2].reset()
            return kept[2]
        return QuotaTree(queues, cohorts, len(space))

    def take_held(self, layout: Layout, running: Sequence[RunningJob]) -> Held:
        """What ``running`` holds on ``layout``, updated from the last cycle's state; owned by
        the caller until `keep` (meanwhile it only learns group capacities of its pools)."""
        state, self._held = self._held, None
        if state is None or state.layout is not layout:
            state = Held(layout)
        state.update(running)
        return state

    def take_victims(self, layout: Layout, tree: QuotaTree, key: object) -> Victims:
        """The victim candidates kept by the last cycle, by (queue, flavor), if it ran on the
        same ``layout`` and quota ``tree`` and ranked victims alike (``key``); else none. Each
        is reused only for the very same running jobs (`Candidates.reusable`)."""
        kept, self._victims = self._victims, None
        if kept is not None and kept[0] is layout and kept[1] is tree and kept[2] == key:
            return kept[3]
        return {}

    def keep(self, queues: Sequence[Queue], cohorts: Sequence[Cohort], tree: QuotaTree,
             held: Held, victims: tuple[object, Victims] | None = None) -> None:
        """Keep a finished cycle's state for the next one (the cycle must not change it);
        ``victims``: the candidates' ranking key and the candidates."""
        self._quota = (tuple(queues), tuple(cohorts), tree)
        self._held = held
        if victims is not None:
            self._victims = (held.layout, tree, victims[0], victims[1])


def same(a: Sequence[object], b: Sequence[object]) -> bool:
    """The same objects in the same order (identity, not equality: they are immutable)."""
    return a is b or (len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True)))
