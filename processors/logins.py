"""A component's logins, checked where it starts: a refused login is said once, with what
to do, and the process stops. Waiting would hang it on a broker that answers, and running
on would fail every step with an error a person has to dig out of each answer."""

from __future__ import annotations

import redis

from clawstream.config import Settings
from clawstream.streams.admin import LoginRefused, wait_for_broker


def check_logins(settings: Settings) -> None:
    """Wait for the brokers (an outage delays a start), then check both logins;
    LoginRefused (or CredentialsError, no secret at all) says which and why."""
    wait_for_broker(settings.bootstrap_servers)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2.0,
                                  socket_connect_timeout=2.0)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        creds = settings.credentials()
        user = creds.redis.username if creds else "default"
        raise LoginRefused(f"Redis at {settings.redis_host}:{settings.redis_port} refused the "
                           f"login of user {user!r} ({exc}): check this role's secret file "
                           "or CLAWSTREAM_REDIS_USERNAME/PASSWORD") from None
    except redis.ResponseError as exc:
        if "NOAUTH" not in str(exc) and "NOPERM" not in str(exc):
            raise
        raise LoginRefused(f"Redis at {settings.redis_host}:{settings.redis_port} asks for a "
                           f"login this process has not got ({exc}): CLAWSTREAM_AUTH=true "
                           "and the role's secret file") from None
    except redis.ConnectionError:
        pass  # Redis away: the worker copes (caches off, steps retried), as it does later
    finally:
        client.close()
