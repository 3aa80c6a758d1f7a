"""The HTTP gateway: the native request API and an OpenAI-compatible edge.

It only publishes request events and reads answers and events; everything it keeps (API
keys, request records, idempotency keys, event histories) lives in Redis, so any number of
gateway processes can serve the same port or sit behind one load balancer. Entry points:
``create_app`` (``clawstream.gateway.app``), ``python -m clawstream.gateway.main``.
"""
