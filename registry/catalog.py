"""The catalog interface: every piece of registry state that is not a version's files.

Versions (with lineage), aliases, tags, A/B routes, issued version numbers and the change
counter. `Registry` and `registry/routes.py` reach storage only through `Catalog`, so a
second backend (PostgreSQL) implements these two protocols and nothing else changes.
Implementations translate their database errors into `registry.errors.StorageError`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from registry.routes import Route


@dataclass(frozen=True)
class VersionRow:
    """One version as the catalog stores it (its folder is the artifact store's business)."""

    name: str
    version: int
    created: float
    base_model: str
    base_sha256: str
    manifest_sha256: str
    parent: int | None
    lineage: dict[str, Any]
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


class CatalogReader(Protocol):
    """Reads, inside or outside a write transaction."""

    def latest_version(self, name: str) -> int | None:
        """The highest existing version of `name` (None when it has none)."""

    def alias_version(self, name: str, alias: str) -> int | None:
        """The version `name:alias` points at (None when the alias does not exist)."""

    def route(self, name: str) -> Route | None:
        """The A/B route called `name`, if any."""


class CatalogWrite(CatalogReader, Protocol):
    """One write transaction: all of its changes or none, and the change counter moves on commit."""

    def issue_version(self, name: str) -> int:
        """The next version number of `name`; numbers are never issued twice, even after a removal."""

    def insert_version(self, row: VersionRow) -> None: ...

    def issue_at_least(self, name: str, version: int) -> None:
        """Never issue `version` or a lower number of `name` again (copying a registry keeps its numbers)."""

    def delete_version(self, name: str, version: int) -> None:
        """Remove a version with its aliases and tags."""

    def set_alias(self, name: str, alias: str, version: int) -> None: ...

    def set_tag(self, name: str, version: int, tag: str, present: bool) -> None: ...

    def put_route(self, route: Route) -> None:
        """Insert or replace a route."""

    def delete_route(self, name: str) -> None: ...


class Catalog(CatalogReader, Protocol):
    """The catalog of one registry. Safe for several threads and processes at once."""

    def write(self) -> AbstractContextManager[CatalogWrite]:
        """A write transaction; writers are serialized, readers never see half of one."""

    def changes(self) -> int:
        """A counter bumped by every committed write (cheap to poll)."""

    def version(self, name: str, version: int) -> VersionRow | None: ...

    def versions(self, name: str | None = None) -> list[VersionRow]:
        """Every version (of `name`), ordered by name and number."""

    def has_name(self, name: str) -> bool:
        """Whether any version of `name` exists."""

    def aliases(self) -> dict[tuple[str, str], int]:
        """(name, alias) -> version, for every alias."""

    def routes(self) -> list[Route]:
        """Every A/B route, ordered by name."""

    def issued(self) -> dict[str, int]:
        """name -> the highest version number ever issued (removed versions included)."""
