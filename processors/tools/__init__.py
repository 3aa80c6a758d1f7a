"""Tools the executor can run; each declares its version and whether it mutates."""
