"""Faust processors: the per-conversation coordinator, the inference dispatcher, the tool
executor. One app, so a single worker process runs a whole local deployment."""
