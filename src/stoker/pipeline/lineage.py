"""Lineage: which step made an artifact, from which code, params and input artifacts, and so
on up to the pipeline's sources (`stoker pipeline lineage`).

The cache entries are the record: each says what one task produced (its outputs' digests) from
what (its code version, params and inputs' digests). An artifact made by several tasks (the
same bytes twice) is traced through the newest of them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from stoker.pipeline.runner import find_run
from stoker.pipeline.store import Store, digest_of
from stoker.spec.errors import StokerError

HEX = re.compile(r"^[0-9a-f]{6,64}$")


def producers(store: Store) -> dict[str, dict[str, Any]]:
    """Each artifact digest -> the newest cache entry that produced it, with the output's name."""
    out: dict[str, dict[str, Any]] = {}
    entries = [store.read_json("cache", f"{key}.json") for key in store.names("cache")]
    for entry in sorted((e for e in entries if e), key=lambda e: e["created"]):
        for output, art in entry["outputs"].items():
            out[art["digest"]] = {**entry, "output": output}
    return out


def resolve(store: Store, what: str) -> str:
    """The digest ``what`` names: a local file or directory (its content's digest), an object
    of the store, ``STEP.OUTPUT`` of the newest run (``RUN:STEP.OUTPUT`` of another; shard 0 of
    a fanned-out step, ``STEP.OUTPUT[3]`` shard 3), or a digest or a unique prefix of one."""
    path = Path(what)
    if path.exists():
        return digest_of(path).digest
    m = re.fullmatch(r"(?:(?P<run>[^:]+):)?(?P<step>[\w-]+)\.(?P<output>[\w-]+)"
                     r"(?:\[(?P<shard>\d+)\])?", what)
    if m is not None and not HEX.match(what):
        run = find_run(store, m["run"] or "last")
        step = run["steps"].get(m["step"])
        shard = int(m["shard"] or 0)
        if step is None or shard >= len(step["shards"]) or \
                m["output"] not in step["shards"][shard]["outputs"]:
            raise StokerError(f"run {run['id']} has no output {what!r}")
        return str(step["shards"][shard]["outputs"][m["output"]]["digest"])
    if HEX.match(what):
        digests = [d for d in producers(store) if d.startswith(what)]
        if len(digests) == 1:
            return digests[0]
        if len(digests) > 1:
            raise StokerError(f"{what!r} is the start of {len(digests)} artifacts' digests: "
                              "give more of it")
    raise StokerError(f"{what!r}: no such file, step output or artifact in {store.url}")


def lineage(store: Store, digest: str) -> dict[str, Any]:
    """The artifact's provenance tree: the task that made it and, for each of that task's
    inputs, the input's own tree. A source (made by no step of this store) has no ``step``."""
    return _tree(digest, producers(store), set())


def _tree(digest: str, made_by: dict[str, dict[str, Any]], seen: set[str]) -> dict[str, Any]:
    entry = made_by.get(digest)
    node: dict[str, Any] = {"digest": digest}
    if entry is None or digest in seen:
        return node
    art = entry["outputs"][entry["output"]]
    node.update(kind=art["kind"], size=art["size"], output=f"{entry['step']}.{entry['output']}")
    inputs: dict[str, Any] = {}
    for name, value in entry["inputs"].items():
        arts = value if isinstance(value, list) else [value]
        trees = [_tree(a["digest"], made_by, seen | {digest}) for a in arts]
        inputs[name] = trees if isinstance(value, list) else trees[0]
    node["step"] = {"name": entry["step"], "kind": entry["kind"], "target": entry["target"],
                    "code": entry["code"], "params": entry["params"], "shard": entry["shard"],
                    "shards": entry["shards"], "run": entry["run"], "created": entry["created"],
                    "result": entry.get("result"), "inputs": inputs}
    return node
