"""How many replicas each Serve deployment runs, as the inference app reports it.

The tokens/s limiter states a pool's capacity per replica; this is where the count comes
from, so a deployment that Serve scales out (or a replica that dies) moves the pool's rate
within ``pool_replicas_poll_s``. Asked over HTTP (``GET /replicas`` on the Serve app's
ingress, which asks Serve's controller), in a daemon thread: the limiter reads the last
answer and never waits on Serve. While Serve cannot be asked the last answer stands (and
before the first, the pools count one replica each).
"""

from __future__ import annotations

import logging
import threading

import httpx

from clawstream import metrics
from clawstream.config import Settings
from clawstream.inference.protocol import REPLICAS_PATH, ReplicaReport
from clawstream.processors.flow.pools import serving_deployment

log = logging.getLogger(__name__)


class ServeReplicas:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._url = f"{settings.serve_url}{REPLICAS_PATH}"
        self._running: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> ServeReplicas:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="serve-replicas",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def running(self) -> dict[str, int]:
        """The last count (a new dict is swapped in whole, so a reader never sees half)."""
        return self._running

    def _run(self) -> None:
        with httpx.Client(timeout=self._settings.pool_replicas_poll_s) as client:
            while not self._stop.is_set():
                self.poll(client)
                self._stop.wait(self._settings.pool_replicas_poll_s)

    def poll(self, client: httpx.Client) -> None:
        """Ask once; on failure keep the last count (logged once per outage)."""
        try:
            response = client.get(self._url)
            response.raise_for_status()
            running = ReplicaReport.model_validate_json(response.content).running
        except (httpx.HTTPError, ValueError) as exc:
            if not self._failing:
                log.warning("cannot read Serve's replica count from %s (%s); the pools keep "
                            "their last count", self._url, exc)
            self._failing = True
            return
        if self._failing:
            log.info("Serve's replica count readable again at %s", self._url)
        self._failing = False
        self._running = running
        for pool, spec in self._settings.pools.items():
            deployment = serving_deployment(spec)
            if deployment is not None and deployment in running:
                metrics.POOL_REPLICAS.labels(pool).set(running[deployment])
