"""Who is calling: the API key names the tenant; headers may name the user.

``Authorization: Bearer <key>`` (what OpenAI clients send) or ``X-API-Key``. No key or an
unknown, revoked or expired key is 401 (an expired one says so, and when); a valid key
asking for another tenant (``X-Clawstream-Tenant``) is 403. Everything a handler reads
afterwards is scoped to the key's tenant, and another tenant's request looks exactly like a
missing one (404).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Header, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from clawstream.gateway.errors import ApiError, bad_request, overloaded
from clawstream.gateway.service import Gateway

USER_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
_bearer = HTTPBearer(auto_error=False, description="An API key from `clawstream keys create`.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    key_id: str
    user_id: str


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def caller(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
    x_clawstream_tenant: Annotated[str | None, Header(max_length=63)] = None,
    x_clawstream_user: Annotated[str | None, Header(max_length=256)] = None,
) -> Caller:
    key = bearer.credentials if bearer is not None else api_key
    if not key:
        raise ApiError(401, "no API key: send 'Authorization: Bearer <key>' (create one with "
                       "`clawstream keys create --tenant T`)", code="missing_api_key")
    try:
        info = await gateway(request).authenticate(key)
    except aioredis.RedisError as exc:
        raise overloaded("API keys cannot be checked right now (Redis)") from exc
    if info is None:
        raise ApiError(401, "incorrect API key provided", code="invalid_api_key")
    if info.expired(int(time.time() * 1000)):
        assert info.expires_at_ms is not None
        when = datetime.fromtimestamp(info.expires_at_ms / 1000, UTC).isoformat(
            timespec="seconds")
        raise ApiError(401, f"this API key expired at {when}: rotate it (`clawstream keys "
                       f"rotate {info.key_id} --tenant {info.tenant_id}`) or create a new one",
                       code="expired_api_key")
    if x_clawstream_tenant is not None and x_clawstream_tenant != info.tenant_id:
        raise ApiError(403, "this API key does not belong to the tenant named in "
                       "X-Clawstream-Tenant", type_="permission_error",
                       code="tenant_mismatch", param="X-Clawstream-Tenant")
    user = x_clawstream_user or "anonymous"
    if not USER_PATTERN.fullmatch(user):
        raise bad_request("invalid user id", param="X-Clawstream-User")
    return Caller(info.tenant_id, info.key_id, user)


CallerDep = Annotated[Caller, Depends(caller)]
GatewayDep = Annotated[Gateway, Depends(gateway)]
