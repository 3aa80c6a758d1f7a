"""Kafka side of clawstream: the topic catalogue and the clients services import."""
