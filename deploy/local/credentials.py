"""The local stack's secrets: one file per role, and the users they log in as.

``up`` writes ``<state_dir>/credentials/<role>.json`` once (mode 0600 in a 0700 folder,
random passwords), starts each component with its own file, and makes sure the broker and
Redis know every role: SCRAM users and ACLs on Kafka (as the super user ``admin``, whose
login the broker is formatted with), ACL users on Redis (an ACL file, the default user
off). Nothing here prints a password.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clawstream.config import Credentials, Login, Settings, credentials_dir
from clawstream.deploy.access import ROLES, Grant, Role, kafka_grants, redis_rules
from clawstream.deploy.local.errors import StackError

ADMIN: Role = "admin"
SCRAM_ITERATIONS = 8192


def path_of(settings: Settings, role: str) -> Path:
    return credentials_dir(settings.state_dir) / f"{role}.json"


def write_private(path: Path, text: str) -> None:
    """Written whole (a reader never sees half a secret) and readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def ensure(settings: Settings) -> dict[Role, Credentials]:
    """Every role's credentials, written the first time; kept (and reused) afterwards."""
    found: dict[Role, Credentials] = {}
    for role in ROLES:
        path = path_of(settings, role)
        if not path.is_file():
            creds = Credentials(role=role, kafka=Login(username=role, password=new_password()),
                                redis=Login(username=role, password=new_password()))
            write_private(path, creds.model_dump_json(indent=2) + "\n")
        found[role] = Credentials.load(path)
    return found


def admin(settings: Settings) -> Credentials:
    return Credentials.load(path_of(settings, ADMIN))


def as_role(settings: Settings, role: str) -> Settings:
    """``settings`` for a process acting as ``role`` on the same stack."""
    return settings.model_copy(update={"role": role, "credentials_file": None})


# Kafka ---------------------------------------------------------------------------------

def broker_auth_properties(settings: Settings, listener: str, controller: str) -> dict[str, str]:
    """SASL/SCRAM on the client listener (brokers talk to each other on it as ``admin``),
    SASL/PLAIN with a static ``admin`` on the controller listener (KRaft controllers cannot
    read SCRAM users before they have the metadata), and ACLs: nothing without a grant."""
    login = admin(settings).kafka
    scram = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
             f'username="{login.username}" password="{login.password}";')
    plain = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
             f'username="{login.username}" password="{login.password}" '
             f'user_{login.username}="{login.password}";')
    lower, ctrl = listener.lower(), controller.lower()
    return {
        "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
        f"listener.name.{lower}.scram-sha-512.sasl.jaas.config": scram,
        f"listener.name.{lower}.scram-sha-256.sasl.jaas.config": scram,
        "sasl.mechanism.controller.protocol": "PLAIN",
        f"listener.name.{ctrl}.sasl.enabled.mechanisms": "PLAIN",
        f"listener.name.{ctrl}.plain.sasl.jaas.config": plain,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{login.username}",
        "allow.everyone.if.no.acl.found": "false",
    }


def format_scram_args(settings: Settings) -> list[str]:
    """``kafka-storage format`` arguments that create the admin's SCRAM login with the
    cluster: the brokers need it to reach each other before any user can be added."""
    login = admin(settings).kafka
    return ["--add-scram", f"SCRAM-SHA-512=[name={login.username},password={login.password}]"]


def admin_client_config(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.bootstrap_servers,
            **as_role(settings, ADMIN).kafka_security()}


def apply_kafka(settings: Settings, timeout_s: float = 30.0) -> None:
    """Every role's SCRAM login and ACLs on the broker (idempotent: a login is set to the
    role's file, an ACL that exists is left)."""
    logins = [creds.kafka for role, creds in ensure(settings).items() if role != ADMIN]
    _alter_scram(settings, [_upsertion(login) for login in logins], timeout_s)
    bindings = [b for role in ROLES for b in acl_bindings(role, settings.app_id)]
    client = _admin_client(settings)  # held until the answers are in: a dropped client
    _wait_all(client.create_acls(bindings), timeout_s, "ACLs")  # cancels its requests


def set_kafka_login(settings: Settings, login: Login, timeout_s: float = 30.0) -> None:
    """Add (or replace) ``login``'s SCRAM credential for its mechanism; the user's
    credential for the other mechanism stays valid."""
    _alter_scram(settings, [_upsertion(login)], timeout_s)


def revoke_kafka_login(settings: Settings, login: Login, timeout_s: float = 30.0) -> None:
    from confluent_kafka.admin import UserScramCredentialDeletion

    _alter_scram(settings, [UserScramCredentialDeletion(login.username, _mechanism(login))],
                 timeout_s)


def _admin_client(settings: Settings) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(admin_client_config(settings))


def _mechanism(login: Login) -> Any:
    from confluent_kafka.admin import ScramMechanism

    return getattr(ScramMechanism, login.mechanism.replace("-", "_"))


def _upsertion(login: Login) -> Any:
    from confluent_kafka.admin import ScramCredentialInfo, UserScramCredentialUpsertion

    return UserScramCredentialUpsertion(
        login.username, ScramCredentialInfo(_mechanism(login), SCRAM_ITERATIONS),
        login.password.encode())


def _alter_scram(settings: Settings, alterations: list[Any], timeout_s: float) -> None:
    client = _admin_client(settings)
    _wait_all(client.alter_user_scram_credentials(alterations), timeout_s, "SCRAM logins")


def acl_bindings(role: Role, app_id: str) -> list[object]:
    """One binding per (resource, operation): the broker refuses a request with two."""
    unique = {(grant.kind, grant.name, grant.prefixed, operation): binding
              for grant in kafka_grants(role, app_id)
              for operation, binding in _bindings(f"User:{role}", grant)}
    return list(unique.values())


def _bindings(principal: str, grant: Grant) -> Iterable[tuple[str, object]]:
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    kind = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
            "cluster": ResourceType.BROKER}[grant.kind]
    pattern = ResourcePatternType.PREFIXED if grant.prefixed else ResourcePatternType.LITERAL
    for operation in grant.operations:
        yield operation, AclBinding(kind, grant.name, pattern, principal, "*",
                                    getattr(AclOperation, operation), AclPermissionType.ALLOW)


def _wait_all(futures: dict[object, object], timeout_s: float, what: str) -> None:
    failed = []
    for key, future in futures.items():
        try:
            future.result(timeout=timeout_s)  # type: ignore[attr-defined]
        except Exception as exc:
            failed.append(f"{key}: {exc}")
    if failed:
        raise StackError(f"the broker refused {what}: " + "; ".join(failed[:5]))


# Redis ---------------------------------------------------------------------------------

def acl_file(settings: Settings) -> Path:
    return settings.state_dir / "redis" / "users.acl"


def redis_acl_lines(settings: Settings) -> list[str]:
    """The ACL file Redis starts with: one user per role (passwords as SHA-256, as Redis
    keeps them) and the default user off, so an anonymous connection can do nothing."""
    import hashlib

    lines = ["user default off resetkeys -@all"]
    for role, creds in ensure(settings).items():
        digest = hashlib.sha256(creds.redis.password.encode()).hexdigest()
        lines.append(f"user {creds.redis.username} on #{digest} {redis_rules(role)}")
    return lines


def write_acl_file(settings: Settings) -> Path:
    """The ACL file, unless Redis already keeps one (rotations save theirs into it)."""
    path = acl_file(settings)
    if not path.is_file():
        write_private(path, "\n".join(redis_acl_lines(settings)) + "\n")
    return path


def apply_redis(settings: Settings) -> None:
    """Every role's user as this release defines it, on a running Redis (an ACL file from
    an older release gains new roles and rules). Each user is reset to the password of its
    role's file: an old password a rotation still honours ends here."""
    import redis

    client = redis.Redis.from_url(as_role(settings, ADMIN).redis_url, socket_timeout=5.0)
    try:
        for role, creds in ensure(settings).items():
            client.execute_command("ACL", "SETUSER", creds.redis.username, "reset", "on",
                                   f">{creds.redis.password}", *redis_rules(role).split())
        client.execute_command("ACL", "SETUSER", "default", "off")
        client.execute_command("ACL", "SAVE")
    finally:
        client.close()


def redis_passwords(settings: Settings, user: str, *, add: str | None = None,
                    remove: str | None = None) -> None:
    """Add or remove one of ``user``'s passwords (Redis accepts any of them), saved to the
    ACL file so a restarted Redis keeps them."""
    import redis

    rules = ([f">{add}"] if add else []) + ([f"<{remove}"] if remove else [])
    client = redis.Redis.from_url(as_role(settings, ADMIN).redis_url, socket_timeout=5.0)
    try:
        client.execute_command("ACL", "SETUSER", user, *rules)
        client.execute_command("ACL", "SAVE")
    finally:
        client.close()
