"""``clawstream credentials rotate ROLE``: a role's Kafka and Redis logins replaced with no
downtime.

Both logins are valid for a while: the new one is added (Redis keeps several passwords per
user; Kafka keeps one SCRAM credential per mechanism, so the new password takes the other
mechanism), the role's secret file is rewritten, the role's processes are restarted one at
a time so they log in with it (a worker drains first; requests wait on their topics, none
fails), and after the grace period the old login is revoked. Clients made from the file
after the rewrite (every CLI command) take the new login at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from clawstream.config import Credentials, Login, Settings
from clawstream.deploy.local import credentials, gateway, worker
from clawstream.deploy.local.errors import StackError

OTHER_MECHANISM = {"SCRAM-SHA-512": "SCRAM-SHA-256", "SCRAM-SHA-256": "SCRAM-SHA-512"}


def rotate(settings: Settings, role: str, grace_s: float,
           say: Callable[[str], None] = lambda _m: None,
           wait: Callable[[float], None] = time.sleep) -> Credentials:
    """Roll ``role``'s logins; returns the new ones. The admin's login is the brokers' own
    (their inter-broker login and the controllers' static one): it changes with a purge."""
    if not settings.auth:
        raise StackError("this stack runs without auth (CLAWSTREAM_AUTH=false): no logins")
    if role == credentials.ADMIN:
        raise StackError("the admin login is the brokers' own login to each other: it is "
                         "not rotated live (`down --purge` makes a new one)")
    known: dict[str, Credentials] = {str(r): c for r, c in credentials.ensure(settings).items()}
    old = known.get(role)
    if old is None:
        raise StackError(f"no role {role!r}; roles: {', '.join(known)}")
    new = Credentials(
        role=role,
        kafka=Login(username=old.kafka.username, password=credentials.new_password(),
                    mechanism=OTHER_MECHANISM[old.kafka.mechanism]),  # type: ignore[arg-type]
        redis=Login(username=old.redis.username, password=credentials.new_password()))
    credentials.set_kafka_login(settings, new.kafka)
    credentials.redis_passwords(settings, new.redis.username, add=new.redis.password)
    say(f"{role}: new Kafka ({new.kafka.mechanism}) and Redis logins added; the old ones "
        "stay valid")
    credentials.write_private(credentials.path_of(settings, role),
                              new.model_dump_json(indent=2) + "\n")
    restarted = restart_role(settings, role)
    say(f"{role}: secret file rewritten" + (
        f"; restarted {', '.join(restarted)}" if restarted else ""))
    if grace_s > 0:
        say(f"{role}: old logins revoked in {grace_s:.0f} s")
        wait(grace_s)
    credentials.revoke_kafka_login(settings, old.kafka)
    credentials.redis_passwords(settings, old.redis.username, remove=old.redis.password)
    say(f"{role}: old logins revoked")
    return new


def restart_role(settings: Settings, role: str) -> list[str]:
    """Restart the local processes that log in as ``role``, one at a time, each ready before
    the next stops (a worker drains its in-flight steps first)."""
    restarted = []
    if role == "worker":
        for name in worker.running(settings):
            index = worker.index_of(name)
            worker.stop(settings, index)
            worker.start(settings, index, wait=True)
            restarted.append(name)
    if role == "gateway" and gateway.pid(settings) is not None:
        gateway.stop(settings)
        gateway.start(settings)
        restarted.append(gateway.NAME)
    return restarted
