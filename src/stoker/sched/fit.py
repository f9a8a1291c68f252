"""Can a gang ever be placed on a cluster, all of its nodes empty? One answer for the control
plane (refusing a submission), the simulator (skipping a trace's job) and the reconciler (whether
a retry can avoid the nodes suspected of its failure).

A gang runs on the nodes of one flavor (`stoker.sched.nodes.Nodes.place`); each node holds as
many ranks as its scarcest resource allows; a gang with a required topology level must fit in
one domain of that level. Cordons are not looked at: a cordoned node comes back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from typing import Literal, NamedTuple

from stoker.sched.types import UNLIMITED, Node

UNLIMITED_RANKS = 1 << 31  # a rank needing nothing the node limits: any number fit


class Unfit(NamedTuple):
    """Why a gang never fits: ``no_flavor`` (no node of its flavors), ``rank`` (no node holds
    one rank), ``domain`` (no domain of its required level holds it all) or ``gang`` (no
    flavor's nodes hold it all); ``room``: the most ranks any flavor (or domain) holds."""
    why: Literal["no_flavor", "rank", "domain", "gang"]
    room: int


def ranks_per_node(one: Sequence[int], capacity: Sequence[int]) -> int:
    """How many ranks needing ``one`` fit on an empty node of ``capacity``."""
    counts = [c // w for w, c in zip(one, capacity, strict=True) if w > 0 and c < UNLIMITED]
    return min(counts, default=UNLIMITED_RANKS)


def never_fits(ranks: int, per_rank: Sequence[int], nodes: Sequence[Node],
               flavors: Collection[str] | None = None, topology: Sequence[str] = (),
               level: str | None = None, required: bool = False,
               avoid: Collection[str] = ()) -> Unfit | None:
    """Why ``ranks`` ranks of ``per_rank`` never fit on ``nodes`` of ``flavors`` (None: any),
    none of ``avoid``, with a ``required`` topology ``level`` (a name of ``topology`` or
    "node"); None when they do."""
    mine = [n for n in nodes if (flavors is None or n.flavor in flavors) and n.name not in avoid]
    if not mine:
        return Unfit("no_flavor", 0)
    room: Counter[object] = Counter()
    depth = None
    if required and level is not None and level != "node" and level in topology:
        depth = list(topology).index(level) + 1
    for n in mine:
        held = ranks_per_node(per_rank, n.capacity)
        if required and level == "node":
            key: object = n.name
        elif depth is not None:
            key = (n.flavor, n.domains[:depth])
        else:
            key = n.flavor
        room[key] += held
    most = max(room.values())
    if most >= ranks:
        return None
    if not any(ranks_per_node(per_rank, n.capacity) for n in mine):
        return Unfit("rank", 0)
    return Unfit("domain" if required and level is not None else "gang", most)
