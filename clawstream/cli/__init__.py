"""The command line: the roof of the package, the one layer that may import every other."""

from clawstream.cli.app import app

__all__ = ["app"]
