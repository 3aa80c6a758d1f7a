"""Tools as plain Python functions: ``@tool`` turns a typed function into a tool.

The function's type hints are its argument schema (pydantic validates every call and
gives the model the JSON schema); its docstring is the description the model reads; the
decorator's arguments are the contract the runtime keeps (mutating, attempts, run-time
limit, cache key and TTL, compensation). Sync functions run in a thread, so a blocking
client does not stall the worker. A parameter annotated :class:`ToolContext` receives the
call's context (its ``step_id`` is the idempotency key to hand to the system a mutating
tool changes).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable
from typing import Any, get_args, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from clawstream.processors.tools.base import ToolArgumentsInvalid, ToolContext, ToolSpec

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""OpenAI's rule for function names: a tool a model may call must be named so."""


class FunctionTool:
    """A tool made from a function; see :func:`tool`."""

    def __init__(self, fn: Callable[..., Any], spec: ToolSpec, arguments: type[BaseModel],
                 context_param: str | None) -> None:
        self.fn = fn
        self.spec = spec
        self._arguments = arguments
        self._context_param = context_param
        self.__doc__ = fn.__doc__
        self.__name__ = spec.name

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments as the function takes them; :class:`ToolArgumentsInvalid` with the
        validator's message (field by field, as a model can act on) if they do not fit."""
        try:
            return dict(self._arguments.model_validate(arguments))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: "
                                 f"{e['msg']}" for e in exc.errors())
            raise ToolArgumentsInvalid(f"invalid arguments for {self.spec.name}: "
                                       f"{problems}") from None

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        kwargs = self.validate(arguments)
        if self._context_param:
            kwargs[self._context_param] = ctx
        if inspect.iscoroutinefunction(self.fn):
            result = await self.fn(**kwargs)
        else:
            result = await asyncio.to_thread(self.fn, **kwargs)
        return result if isinstance(result, str) else json.dumps(result, default=str)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Still callable as the plain function (in the team's own tests, say)."""
        return self.fn(*args, **kwargs)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None, mutating: bool = False, attempts: int = 2,
         timeout_s: float | None = None, compensation: str | None = None,
         cache_ttl_s: float | None = None, cache_params: tuple[str, ...] | None = None,
         version: str = "1") -> Any:
    """Declare a tool: ``@tool`` or ``@tool(mutating=True, compensation="undo_x")``.

    ``attempts``: how often a failing call is tried (validation errors never are);
    ``timeout_s``: run-time limit of one call (None: the lane's); ``cache_params``: the
    arguments that decide the result (the cache key; None: all); ``cache_ttl_s``: None is
    the default TTL, 0 never caches (mutating tools never are); ``compensation``: the tool
    that undoes a completed call when its request fails later."""

    def build(fn: Callable[..., Any]) -> FunctionTool:
        tool_name = name or fn.__name__
        if not NAME.match(tool_name):
            raise ValueError(f"tool name {tool_name!r}: letters, digits, _ and -, at most 64")
        hints = get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        context_param = None
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {tool_name}: *args and **kwargs cannot be described")
            annotation = hints.get(param.name, Any)
            if annotation is ToolContext or ToolContext in get_args(annotation):
                context_param = param.name
                continue
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (annotation, default)
        model = create_model(f"{tool_name}_arguments",  # type: ignore[call-overload]
                             __config__=ConfigDict(extra="forbid"), **fields)
        unknown = set(cache_params or ()) - set(fields)
        if unknown:
            raise ValueError(f"tool {tool_name}: cache_params {sorted(unknown)} are not "
                             "arguments")
        spec = ToolSpec(name=tool_name, version=version, mutating=mutating,
                        max_attempts=attempts, timeout_s=timeout_s, compensation=compensation,
                        cache_ttl_s=cache_ttl_s, cache_params=cache_params,
                        description=(description or inspect.getdoc(fn) or "").strip(),
                        parameters_json=json.dumps(model.model_json_schema(),
                                                   sort_keys=True))
        return FunctionTool(fn, spec, model, context_param)

    return build(fn) if fn is not None else build

