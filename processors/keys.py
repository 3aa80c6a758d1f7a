"""Key construction, defined once: step idempotency keys and dedup keys."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Stable JSON: same value, same bytes, whatever the dict order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def short_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def step_key(step_type: str, conversation_id: str, canonical_input: Any) -> str:
    """``step_type:conversation_id:hash(canonical input)``.

    The input includes the request id and step index, so a tool called twice with the same
    arguments in two turns gets two keys, while retries of one step share one key.
    """
    return f"{step_type}:{conversation_id}:{short_hash(canonical_input)}"


def dedup_key(tenant_id: str, conversation_id: str, idempotency_key: str) -> str:
    """Idempotency keys are scoped to a tenant's conversation: two clients may pick the same."""
    return f"{tenant_id}|{conversation_id}|{idempotency_key}"


# Redis keys of flow control (processors/flow/), one prefix each.
def bucket_key(kind: str, name: str) -> str:
    """A token bucket: ``kind`` is pool (the tokens/s limiter)."""
    return f"clawstream:bucket:{kind}:{name}"


def arrivals_key(kind: str, name: str) -> str:
    """An entrance limit's log of admitted arrivals: ``kind`` is user or tenant."""
    return f"clawstream:arrivals:{kind}:{name}"


def tenant_budget_key(tenant_id: str, window_start_s: int) -> str:
    """Tokens and cost a tenant spent in the window starting at ``window_start_s``."""
    return f"clawstream:budget:{tenant_id}:{window_start_s}"


def recall_key(conversation_id: str) -> str:
    """The archive of a conversation's exchanges, read by the recall tool."""
    return f"clawstream:recall:{conversation_id}"


def admissions_key(pool: str) -> str:
    """The limiter's admission log of a pool (capped), for measuring achieved tokens/s."""
    return f"clawstream:admissions:{pool}"


def ledger_key(step_id: str) -> str:
    """The side-effect ledger's entry for one step (all its attempts share it)."""
    return f"ledger:{step_id}"


def ledger_claim_key(step_id: str) -> str:
    """The lease of the execution applying one step right now (expires with it)."""
    return f"ledger:claim:{step_id}"


def content_hash(value: Any) -> str:
    """Full SHA-256 of the canonical JSON: cache keys must not collide, unlike step ids."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def normalise_whitespace(text: str) -> str:
    """Runs of whitespace become one space, ends trimmed: re-indented text is the same text."""
    return " ".join(text.split())


def prompt_cache_key(prompt_version: str, model_id: str, params: Any, messages: Any) -> str:
    """Prompt-output cache: prompt version + served model + generation parameters + context.

    ``messages`` is the already-trimmed context the model sees (system prompt, the last
    exchanges, the question with its notes); any change in any part is a different key.
    """
    return (f"pc:{prompt_version}:{model_id}:{short_hash(params)}:"
            f"{content_hash(messages)}")


def tool_cache_key(tool: str, version: str, critical_arguments: Any) -> str:
    """Tool-result cache: tool + client version + only the arguments the tool declares
    critical, so a cosmetic argument (a trace note, say) does not split the cache."""
    return f"tc:{tool}:{version}:{content_hash(critical_arguments)}"


def embedding_cache_key(model_id: str, text: str) -> str:
    """Embedding cache: model id + hash of the whitespace-normalised content."""
    digest = hashlib.sha256(normalise_whitespace(text).encode()).hexdigest()
    return f"emb:{model_id}:{digest}"


# The HTTP gateway's Redis records (gateway/). Everything under one prefix; records of
# requests expire (settings.gateway_record_ttl_s), API keys do not (volatile-lru never
# evicts them).
def api_key_key(key_hash: str) -> str:
    """An API key's record, found by the SHA-256 of the key (the key itself is not kept)."""
    return f"clawstream:gw:apikey:{key_hash}"


def api_key_id_key(key_id: str) -> str:
    """From the key's public id (what ``keys list`` shows) to its hash, for revoking."""
    return f"clawstream:gw:apikey-id:{key_id}"


def tenant_api_keys_key(tenant_id: str) -> str:
    """The public ids of a tenant's keys."""
    return f"clawstream:gw:apikeys:{tenant_id}"


def request_record_key(request_id: str) -> str:
    """A request as the gateway knows it: tenant, status, the published record, answer."""
    return f"clawstream:gw:request:{request_id}"


def request_events_key(request_id: str) -> str:
    """The request's timeline events, oldest first, for late readers of its event stream."""
    return f"clawstream:gw:events:{request_id}"


def gateway_idempotency_key(tenant_id: str, idempotency_key: str) -> str:
    """A tenant's Idempotency-Key header -> the request it started (hashed: any bytes)."""
    return f"clawstream:gw:idem:{tenant_id}:{content_hash(idempotency_key)[:32]}"


def conversation_requests_key(conversation_id: str) -> str:
    """The requests of a (tenant-scoped) conversation, in arrival order."""
    return f"clawstream:gw:conv:{conversation_id}"


TENANT_SEPARATOR = "/"


def tenant_conversation_id(tenant_id: str, conversation: str) -> str:
    """The conversation id on the wire for a client's conversation: two tenants may pick
    the same name, and the coordinator keeps one state per conversation id."""
    return f"{tenant_id}{TENANT_SEPARATOR}{conversation}"


def client_conversation_id(tenant_id: str, conversation_id: str) -> str:
    """The client's name of a conversation (the inverse of tenant_conversation_id)."""
    return conversation_id.removeprefix(f"{tenant_id}{TENANT_SEPARATOR}")
