# alertbridge — `uv run just <recipe>` (uv installs everything, just included, into .venv)

set shell := ["bash", "-euo", "pipefail", "-c"]

# list the recipes
default:
    @just --list

# run the local stack: nats-server, provisioning, worker, ingress on :8080 (Ctrl-C stops)
up *ARGS:
    uv run alertbridge up {{ARGS}}

# the whole test suite (starts its own nats-servers on free ports)
test *ARGS:
    uv run pytest {{ARGS}}

# lint and type-check
lint:
    uv run ruff check .
    uv run ruff format --check .
    uv run mypy

# what CI runs
ci: lint test

# format the code
fmt:
    uv run ruff format .
    uv run ruff check --fix .
