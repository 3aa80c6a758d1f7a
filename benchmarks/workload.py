"""A seeded, replayable agent workload with realistic repetition, for the cache benchmark.

Four kinds of interaction, in shares the caller picks:

- ``fresh``: a question nobody asked before (every cache misses, except corpus vectors);
- ``repeat_question``: an earlier question asked again in a new conversation, so the
  context is the same (prompt-output and tool-result caches can answer);
- ``repeat_lookup``: an earlier question asked as a follow-up in a conversation that
  already has history: the retrieval look-up repeats, the prompt (context) does not;
- ``repeat_document``: an earlier question pasted again with different whitespace
  (re-indented, re-wrapped): only the whitespace-normalised embedding cache recognises it.

Repeats pick earlier questions with Zipf-like popularity (a few questions are asked
often), and only ones at least ``min_gap`` interactions back, so the original has been
answered before its repeat is sent in a pipeline of ``min_gap`` requests in flight.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TOPICS = ("Kafka", "Redis", "Ray Serve", "Faust", "the retry policy", "the interactive lane",
          "the batch lane", "the dead-letter queue", "the coordinator", "the tool executor")
ASPECTS = ("a worker crash", "back-pressure", "a duplicate request", "a slow model",
           "a full queue", "a restart", "a cache outage", "a long conversation",
           "a burst of traffic", "a poison message")
FORMS = ("How does {t} deal with {a}?", "What happens to {t} during {a}?",
         "Which settings of {t} matter for {a}?", "Why does {t} care about {a}?")
KINDS = ("fresh", "repeat_question", "repeat_lookup", "repeat_document")


@dataclass(frozen=True)
class Interaction:
    index: int
    kind: str
    conversation_id: str
    tenant_id: str
    text: str


def _reindent(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    cut = rng.randrange(1, len(words))
    return "  " + " ".join(words[:cut]) + "\n\t" + "  ".join(words[cut:]) + "\n"


def generate(n: int, *, repeat_questions: float = 0.35, repeat_lookups: float = 0.15,
             repeat_documents: float = 0.10, seed: int = 7, min_gap: int = 8,
             tenants: int = 3, run_id: str = "run") -> list[Interaction]:
    """``n`` interactions; the same arguments give the same workload (``run_id`` only
    prefixes conversation ids, so two runs of one workload do not share conversations)."""
    fresh_share = 1.0 - repeat_questions - repeat_lookups - repeat_documents
    if fresh_share < 0:
        raise ValueError("repeat shares add up to more than 1")
    rng = random.Random(seed)
    asked: list[Interaction] = []  # fresh questions, in order
    conversations: list[tuple[int, str]] = []  # (index of first turn, conversation id)
    out: list[Interaction] = []
    for i in range(n):
        eligible = [q for q in asked if q.index <= i - min_gap]
        kind = rng.choices(KINDS, weights=(fresh_share, repeat_questions, repeat_lookups,
                                           repeat_documents))[0]
        if kind != "fresh" and not eligible:
            kind = "fresh"
        tenant = f"tenant-{rng.randrange(tenants)}"
        conversation = f"{run_id}-{i:05d}"
        if kind == "fresh":
            text = rng.choice(FORMS).format(t=rng.choice(TOPICS), a=rng.choice(ASPECTS))
            text = f"{text} (ticket {rng.randrange(10**6)})"
        else:
            weights = [1.0 / (rank + 1) for rank in range(len(eligible))]
            text = rng.choices(eligible, weights=weights)[0].text
            if kind == "repeat_document":
                text = _reindent(text, rng)
            elif kind == "repeat_lookup":
                old = [c for c in conversations if c[0] <= i - min_gap]
                if old:
                    conversation = rng.choice(old)[1]
                else:
                    kind = "repeat_question"
        item = Interaction(i, kind, conversation, tenant, text)
        out.append(item)
        if kind == "fresh":
            asked.append(item)
        if conversation == f"{run_id}-{i:05d}":
            conversations.append((i, conversation))
    return out
