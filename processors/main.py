"""Worker entry point: ``python -m clawstream.processors.main worker --name worker-0``."""

from __future__ import annotations

import argparse
import logging
import sys

from mode.utils.loops import get_event_loop

LOGIN_REFUSED_EXIT = 3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clawstream.processors.main")
    parser.add_argument("command", choices=["worker"])
    parser.add_argument("--name", default="worker-0")
    args = parser.parse_args(argv)

    from clawstream.config import CredentialsError, Settings
    from clawstream.processors import local_state
    from clawstream.processors.lifecycle import ClawstreamWorker
    from clawstream.processors.logins import check_logins
    from clawstream.processors.worker import build_worker
    from clawstream.streams import kafka_access
    from clawstream.streams.admin import LoginRefused
    from clawstream.streams.schema_registry import bind_settings

    settings = Settings()
    # Faust cannot bootstrap without a broker and exits: wait for one instead, so a worker
    # started or restarted in place during a broker outage comes up when the broker is back.
    # (Faust replaces this logging set-up with its own when it starts.)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    kafka_access.bind(settings)  # the worker's role, from its own secret file
    try:
        check_logins(settings)
    except (LoginRefused, CredentialsError) as exc:
        logging.getLogger("clawstream.worker").error("cannot start: %s", exc)
        sys.exit(LOGIN_REFUSED_EXIT)
    bind_settings(settings)  # what it writes: the registry's wire format
    datadir = settings.state_dir / "faust" / args.name
    local_state.prepare(datadir)  # before Faust opens it: trusted only after a clean stop
    worker = build_worker(settings, args.name)
    worker.flag_reader.start()
    worker.serve_replicas.start()
    if worker.coordinator is not None:  # the coordinator's login writes the rollback
        worker.canary_watcher.start()
    faust_worker = ClawstreamWorker(
        worker.app, settings=settings,
        drain=lambda: worker.executors.drain(settings.drain_timeout_s),
        loglevel="info", loop=get_event_loop(), redirect_stdouts=False,
    )
    try:
        faust_worker.execute_from_commandline()
    except SystemExit as stopped:
        if stopped.code in (0, None) and faust_worker.stopping_on_sigterm:
            local_state.mark_clean(datadir)
        raise
    finally:
        if worker.spans is not None:
            worker.spans.shutdown()  # what is queued goes out before the process ends


if __name__ == "__main__":
    main()
