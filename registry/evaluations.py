"""Evaluations of a version made after it was pushed (`platform eval REF --lm-eval TASKS`).

A version's files and lineage are immutable (the manifest covers `lineage.json`), so a later
evaluation cannot be written into them. Like human reviews and rollout outcomes, it is a row in
the catalog, shown with the version (`registry show`) and added to its model card where the card
is shown or published (`registry.card.with_records`). `kind` names the harness (`lm-eval`); the
record is that harness's summary (tasks, metrics, settings), stored as JSON.
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa

from registry import db as t
from registry.db import CatalogDB, storable


class EvaluationStore:
    """The evaluation rows of one registry."""

    def __init__(self, db: CatalogDB) -> None:
        self.db = db

    def add(
        self, name: str, version: int, kind: str, record: dict[str, Any], now: float | None = None
    ) -> int:
        """Store one evaluation of `name@version`; returns its id."""
        row = {
            "name": name,
            "version": version,
            "kind": kind,
            "created": time.time() if now is None else now,
            "record": json.dumps(record, default=str, allow_nan=True),
        }
        with self.db.write(bump=False) as conn:
            result = conn.execute(sa.insert(t.evaluations).values(**storable(row)))
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def for_version(self, name: str, version: int) -> list[dict[str, Any]]:
        """Every stored evaluation of `name@version`, oldest first, each with `id`, `kind`,
        `created` and the record's fields."""
        c = t.evaluations.c
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(c.id, c.kind, c.created, c.record)
                .where(c.name == name, c.version == version)
                .order_by(c.created, c.id)
            ).all()
        return [{"id": x.id, "kind": x.kind, "created": x.created, **json.loads(x.record)} for x in rows]
