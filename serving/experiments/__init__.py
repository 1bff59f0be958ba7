"""Live experiments over A/B routes: the evidence writer the server runs, statistics, reports and charts.

The routes and the evidence rows themselves are catalog state and live in `registry`
(`registry/routes.py`, `registry/evidence_store.py`); this package only writes and analyses them.
"""
