"""The Kafka floor for ``bench throughput``: relays records from each topic to the next.

``python -m benchmarks.floor BOOTSTRAP T0 T1 ... Tn`` moves every record of T(i) to T(i+1)
with the same key, one consumer and one producer per stage, in one process, the way a
request crosses clawstream's topics with nothing done in between: no decoding, no state,
no cache, no model. Producer settings match the publisher's (acks=all, idempotent,
murmur2); consumers long-poll with the default fetch wait (the broker answers as soon as
a record is there, so the wait costs no latency, and a short one costs the broker an empty
fetch every few milliseconds per consumer).
"""

from __future__ import annotations

import itertools
import signal
import sys
import threading

from confluent_kafka import Consumer, Producer

from clawstream.streams.kafka_access import client_config


def relay(bootstrap: str, source: str, target: str, stop: threading.Event) -> None:
    consumer = Consumer({**client_config(bootstrap), "group.id": f"floor-{source}",
                         "auto.offset.reset": "earliest",
                         "enable.auto.commit": True})
    producer = Producer({**client_config(bootstrap), "acks": "all", "linger.ms": 1,
                         "enable.idempotence": True, "partitioner": "murmur2_random"})
    consumer.subscribe([source])
    while not stop.is_set():
        # poll returns as soon as a record is there; consume(n, t) would wait out t.
        msg = consumer.poll(0.05)
        if msg is not None and msg.error() is None:
            producer.produce(target, key=msg.key(), value=msg.value())
        producer.poll(0)
    producer.flush(5)
    consumer.close()


def main(bootstrap: str, topics: list[str]) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stages = [threading.Thread(target=relay, args=(bootstrap, a, b, stop))
              for a, b in itertools.pairwise(topics)]
    for stage in stages:
        stage.start()
    for stage in stages:
        stage.join()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
