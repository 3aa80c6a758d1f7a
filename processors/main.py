"""Worker entry point: ``python -m clawstream.processors.main worker --name worker-0``."""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 1 or argv[0] != "worker":
        raise SystemExit("usage: python -m clawstream.processors.main worker [--name NAME]")
    name = argv[argv.index("--name") + 1] if "--name" in argv else "worker-0"
    os.environ["CLAWSTREAM_WORKER_NAME"] = name
    from clawstream.config import get_settings
    from clawstream.streams.admin import wait_for_broker

    # Faust cannot bootstrap without a broker and exits: wait for one instead, so a worker
    # started or restarted in place during a broker outage comes up when the broker is back.
    # (Faust replaces this logging set-up with its own when it starts.)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    wait_for_broker(get_settings().bootstrap_servers)
    from clawstream.processors import coordinator, workers  # noqa: F401  (registers the agents)
    from clawstream.processors.app import app

    port = str(get_settings().worker_web_port)
    sys.argv = [sys.argv[0], "worker", "-l", "info", "--web-port", port,
                "--web-host", "127.0.0.1"]
    app.main()


if __name__ == "__main__":
    main(sys.argv[1:])
