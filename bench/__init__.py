"""`just bench` and the tools it runs.

bench.py (run by bench/run.sh) is a thin entry point to cli.py; the phases live in
phases/, one module each; results.py holds the typed results, table.py the table.
loadgen.py (its requests in loadgen_requests.py, its burst mode in loadgen_burst.py),
natsq.py, slow_broker.py, pyspy_summary.py and inproc.py also run as scripts (see each
one's docstring). Importing any of them starts nothing.
"""
