"""``python -m clawstream.gateway.main``: the gateway under uvicorn, as ``up`` starts it."""

from __future__ import annotations

import os
import shutil

import uvicorn

from clawstream.config import get_settings
from clawstream.gateway.app import MULTIPROC_ENV


def main() -> None:
    settings = get_settings()
    if settings.gateway_workers > 1:
        # Each uvicorn process counts into files here and ``/metrics`` adds them up, so a
        # scrape that lands on any one process sees the whole gateway.
        folder = settings.state_dir / "metrics" / "gateway"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ[MULTIPROC_ENV] = str(folder)
    uvicorn.run("clawstream.gateway.app:create_app", factory=True,
                host=settings.gateway_host, port=settings.gateway_port,
                workers=settings.gateway_workers, log_level="warning", access_log=False,
                timeout_keep_alive=5,
                # uvicorn's own last resort (a plain-text 503), well above the gateway's
                # in-flight limit, which answers first in OpenAI's shape
                limit_concurrency=4 * settings.gateway_max_inflight + 256,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
