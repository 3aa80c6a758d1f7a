"""Which backend answers a /generate request: pure rules, shared by the Serve deployments.

A deployment holds one or more backends (the local model; or the upstream models of the
pools); the request's ``model`` picks one (null: the deployment's first). On a test stack
the scripted fixture comes first: a request carrying a registered marker is answered by
its script whatever model it names, so a test steers its own conversation while others
run on the real model.

The ingress routes between deployments by the same ids (:func:`deployment_for`), so a
model id is served by exactly one deployment.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from clawstream.inference.backends.base import GenerationBackend
from clawstream.inference.errors import InputRejected
from clawstream.inference.protocol import ComponentHealth, GenerateRequest, serves_upstream
from clawstream.inference.scripted import ScriptedFixtureBackend

LOCAL = "local"
UPSTREAM = "upstream"


def deployment_for(model: str | None, upstream_models: Collection[str]) -> str:
    """``UPSTREAM`` for a model an upstream serves, else ``LOCAL`` (the local generator,
    which also answers null and rejects ids it does not serve); clients pick the direct
    route by the same rule (:func:`protocol.generate_path`)."""
    return UPSTREAM if serves_upstream(model, upstream_models) else LOCAL


class BackendRouter:
    def __init__(
        self,
        backends: Sequence[GenerationBackend],
        scripted: ScriptedFixtureBackend | None = None,
    ) -> None:
        if not backends:
            raise ValueError("a router needs at least one backend")
        self._default = backends[0]
        self._by_id = {backend.model_id: backend for backend in backends}
        self.scripted = scripted

    @property
    def default(self) -> GenerationBackend:
        return self._default

    def pick(self, request: GenerateRequest) -> GenerationBackend:
        if self.scripted is not None and self.scripted.claims(request.messages):
            return self.scripted
        if request.model is None:
            return self._default
        backend = self._by_id.get(request.model)
        if backend is None:
            raise InputRejected(
                f"model {request.model!r} is not served here; this deployment serves "
                f"{sorted(self._by_id)} (send null to use {self._default.model_id!r})"
            )
        return backend

    def served(self) -> list[ComponentHealth]:
        return [ComponentHealth(model=b.model_id, backend=b.name) for b in self._by_id.values()]
