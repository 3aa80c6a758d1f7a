"""Model serving for clawstream: a Ray Serve app (generation + embeddings) and its client.

Importing this package stays cheap (no Ray, torch or llama.cpp) so that the dispatcher can
use :mod:`clawstream.inference.client` without pulling the serving stack into its process.
"""
