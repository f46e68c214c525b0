# alertbridge: `uv run just <recipe>` (uv installs everything, just included, into .venv)

set shell := ["bash", "-euo", "pipefail", "-c"]

# The project's tools come from .venv (uv run puts it on PATH; this covers a bare `just`).
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

# list the recipes
default:
    @just --list

# run the local stack: nats-server, provisioning, worker, ingress on :8080 (Ctrl-C stops)
up *ARGS:
    alertbridge up {{ARGS}}

# write the `nats` CLI context for the local stack (nats --context alertbridge stream info ALERTS)
nats-context:
    alertbridge nats-context

# the whole test suite (starts its own nats-servers on free ports)
test *ARGS:
    pytest {{ARGS}}

# hostile input: REQUESTS schemathesis requests at a real ingress + nats-server (CI: 300)
fuzz REQUESTS="10000":
    ALERTBRIDGE_FUZZ_REQUESTS={{REQUESTS}} pytest tests/test_fuzz.py -q -s -p no:cacheprovider

# mutation testing of the core, on demand, slow, not in CI ([tool.mutmut]; docs/testing.md); 'contracts.subjects*' narrows
mutate *MUTANTS:
    nice -n 19 mutmut run {{MUTANTS}}
    mutmut results

# lint and type-check
lint:
    ruff check .
    ruff format --check .
    mypy

# what CI runs
ci: lint test

# format the code and apply safe fixes
fmt:
    ruff format .
    ruff check --fix .

# benchmark against the reference design (needs ../shared/bench): prints one table; --quick, --help
bench *ARGS:
    bench/run.sh {{ARGS}}
