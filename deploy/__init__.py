"""Deployment of clawstream: the local stack (``clawstream.deploy.local``) and, later,
cluster manifests.

The local stack runs the real components (an Apache Kafka broker from Maven Central jars,
Debian's ``redis-server``, a local Ray cluster with the Serve app, and the Faust workers)
as detached processes on loopback, one command up and one down. No Docker.
"""
