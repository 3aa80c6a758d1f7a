# clawstream tasks. On a fresh machine use ./dev <task> (it installs, then runs just).
set dotenv-load := false
# Recipe arguments reach commands as "$@", so `./dev test -k "a or b"` keeps its quoting.
set positional-arguments
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

default:
    @just --list

# Start the local stack: Kafka (KRaft), Redis, the schema registry, Ray Serve with the model, supervised Faust workers, the gateway
up:
    clawstream up

# Stop the local stack
down:
    clawstream down

status:
    clawstream status

# Start everything and run a two-turn conversation, printing answers and step timelines
demo:
    clawstream demo

# The whole test suite against the real stack (its own ports and state dir)
test *ARGS:
    python -m pytest -q "$@"

lint:
    ruff check .
    mypy

# Benchmarks: just bench e2e
bench NAME *ARGS:
    shift; python -m "benchmarks.{{NAME}}" "$@"
