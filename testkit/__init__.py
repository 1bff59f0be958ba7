"""Helpers shared by `tests/` and `loadtests/`: servers, random adapters, free ports, PostgreSQL.

Neither folder imports the other; both import this package. It is run from the repository root
(pytest's rootdir, `python -m loadtests.NAME`), not installed with the platform.
"""
