"""Ray Serve applications by name for a cluster's declarative config (KubeRay's
``RayService`` ``serveConfigV2``: ``import_path: clawstream.inference.entry:build`` with
``args: {app: NAME}``); settings come from the pod's ``CLAWSTREAM_*`` environment. The local
stack deploys the same applications imperatively (``inference/deploy.py``)."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from clawstream.config import get_settings
from clawstream.inference.app import build_apps
from clawstream.inference.config import InferenceConfig


def build(args: dict[str, Any]) -> Application:
    """The application ``args["app"]`` (one of ``inference.app.ROUTE_PREFIXES``)."""
    apps = build_apps(InferenceConfig.from_settings(get_settings()))
    name = str(args.get("app", ""))
    if name not in apps:
        raise ValueError(f"unknown Serve application {name!r}; one of {', '.join(apps)}")
    return apps[name]
