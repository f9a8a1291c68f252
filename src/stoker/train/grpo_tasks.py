"""Verifiable synthetic tasks for GRPO: a prompt, its one right answer, and a reward with
partial credit, so a model trained from scratch can be checked exactly.

A task is two functions: ``make_prompt(rng) -> (prompt, answer)`` and
``reward(completion, answer) -> float`` in [0, 1]. The completion is the decoded text the
model wrote after the prompt; a finished answer ends with ``STOP`` (a newline), which
`reward` expects, so a model that rambles on never scores 1.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

STOP = "\n"
LETTERS = "abcdefgh"


class Task(Protocol):
    def make_prompt(self, rng: random.Random) -> tuple[str, str]: ...

    def reward(self, completion: str, answer: str) -> float: ...


def exact_or_partial(completion: str, answer: str, partial: float) -> float:
    """1 for ``answer`` followed by `STOP`; otherwise ``partial`` times the fraction of the
    answer's characters the completion has in their places (extra characters count against
    it: the denominator is the longer of the two)."""
    finished = completion.endswith(STOP)
    text = completion[:-len(STOP)] if finished else completion
    if finished and text == answer:
        return 1.0
    hits = sum(a == b for a, b in zip(text, answer, strict=False))
    return partial * hits / max(len(text), len(answer), 1)


@dataclass(frozen=True)
class Reverse:
    """``"abc="`` -> ``"cba"``: a string of ``min_len``..``max_len`` letters, reversed."""

    min_len: int = 3
    max_len: int = 6
    partial: float = 0.5

    def make_prompt(self, rng: random.Random) -> tuple[str, str]:
        s = "".join(rng.choice(LETTERS) for _ in range(rng.randint(self.min_len, self.max_len)))
        return f"{s}=", s[::-1]

    def reward(self, completion: str, answer: str) -> float:
        return exact_or_partial(completion, answer, self.partial)


@dataclass(frozen=True)
class Addition:
    """``"12+345="`` -> ``"357"``: two numbers of ``min_len``..``max_len`` digits. Partial
    credit is for digits right from the units up (the answer reversed and compared)."""

    min_len: int = 1
    max_len: int = 3
    partial: float = 0.5

    def make_prompt(self, rng: random.Random) -> tuple[str, str]:
        a, b = (rng.randrange(10 ** rng.randint(self.min_len, self.max_len)) for _ in range(2))
        return f"{a}+{b}=", str(a + b)

    def reward(self, completion: str, answer: str) -> float:
        finished = completion.endswith(STOP)
        text = completion[:-len(STOP)] if finished else completion
        if finished and text == answer:
            return 1.0
        return exact_or_partial(text[::-1], answer[::-1], self.partial)


TASKS: dict[str, type[Reverse] | type[Addition]] = {"reverse": Reverse, "addition": Addition}
