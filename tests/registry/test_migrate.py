"""Registries made by the first release upgrade in place; `registry migrate` copies a folder
registry into a shared PostgreSQL one with every number, alias, route and evidence row."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.routes import get_route, start_route
from registry.store import Registry
from testkit.postgres import PASSWORD, Postgres
from tests.registry.test_store import LINEAGE, make_adapter

# The first release's schema, verbatim (registry/store.py and registry/evidence.py at a3a444a).
FIRST_CATALOG = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL,
    base_model TEXT NOT NULL, base_sha256 TEXT NOT NULL, manifest_sha256 TEXT NOT NULL,
    parent INTEGER, lineage TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (name, alias));
CREATE TABLE IF NOT EXISTS tags (
    name TEXT NOT NULL, version INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (name, version, tag));
CREATE TABLE IF NOT EXISTS routes (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('changes', 0);
"""
FIRST_EVIDENCE = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, route TEXT NOT NULL, variant TEXT NOT NULL, user_hash TEXT,
    latency_s REAL, ttft_s REAL, prompt_tokens INTEGER, completion_tokens INTEGER, status TEXT NOT NULL,
    shadow INTEGER NOT NULL DEFAULT 0, output TEXT);
CREATE TABLE IF NOT EXISTS feedback (
    completion_id TEXT NOT NULL, ts REAL NOT NULL, route TEXT NOT NULL, variant TEXT NOT NULL,
    score REAL, thumbs INTEGER, comment TEXT);
"""


def first_release_registry(root: Path, tmp_path: Path) -> Path:
    """A registry folder as the first release left it: two versions of `support` (one removed
    later, so 3 numbers were issued), an alias, a tag, a route and evidence in evidence.sqlite."""
    reg = Registry(root)  # today's code writes the same files and tables...
    a = make_adapter(tmp_path / "a")
    reg.push("support", a, LINEAGE)
    reg.push("support", a, LINEAGE)
    reg.push("support", a, LINEAGE)
    reg.remove("support@3")
    reg.set_alias("support@1", "prod")
    reg.tag("support@2", "candidate")
    start_route(reg, "support", [("support@1", 90), ("support@2", 10)])
    reg.close()
    db = sqlite3.connect(root / "catalog.sqlite")  # ...then back to the first release's schema
    db.executescript("DROP TABLE alembic_version; DROP TABLE requests; DROP TABLE feedback;")
    db.executescript(FIRST_CATALOG)
    db.close()
    ev = sqlite3.connect(root / "evidence.sqlite")
    ev.executescript(FIRST_EVIDENCE)
    ev.execute(
        "INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        ("chatcmpl-1", time.time(), "support", "support@1", "u", 0.2, 0.05, 10, 4, "ok", 0, None),
    )
    ev.execute(
        "INSERT INTO feedback VALUES (?,?,?,?,?,?,?)",
        ("chatcmpl-1", time.time(), "support", "support@1", None, 1, ""),
    )
    ev.commit()
    ev.close()
    return root


def test_a_first_release_registry_upgrades_in_place_with_nothing_lost(tmp_path: Path) -> None:
    root = first_release_registry(tmp_path / "reg", tmp_path)
    reg = Registry(root)
    assert [v.ref for v in reg.list_versions()] == ["support@1", "support@2"]
    assert reg.get("support:prod").ref == "support@1" and reg.get("support@2").tags == ("candidate",)
    assert [v.ref for v in get_route(reg, "support").variants] == ["support@1", "support@2"]
    reqs, fb = reg.evidence().load("support")
    assert [r["id"] for r in reqs] == ["chatcmpl-1"] and fb[0]["thumbs"] == 1
    assert not (root / "evidence.sqlite").exists() and (root / "evidence.sqlite.imported").is_file()
    assert reg.push("support", make_adapter(tmp_path / "b"), LINEAGE).version == 4  # 3 stays used
    assert all(err is None for err in reg.verify_all().values())
    again = Registry(root)  # opening it again imports nothing twice
    assert len(again.evidence().load("support")[0]) == 1


def test_migrate_copies_a_folder_registry_into_postgresql(tmp_path: Path, postgres: Postgres) -> None:
    root = first_release_registry(tmp_path / "reg", tmp_path)
    url, artifacts = postgres.new_database(), tmp_path / "shared-artifacts"

    def migrate() -> str:
        args = ["registry", "migrate", "--registry", str(root), "--to", url, "--to-artifacts", str(artifacts)]
        out = CliRunner().invoke(cli, args)
        assert out.exit_code == 0, out.output
        assert PASSWORD not in out.output
        return out.output

    first = migrate()
    assert "copied 2 version(s)" in first and "every file verified" in first
    shared = Registry(url, artifacts)
    assert [v.ref for v in shared.list_versions()] == ["support@1", "support@2"]
    assert shared.get("support:prod").ref == "support@1" and shared.get("support@2").tags == ("candidate",)
    assert get_route(shared, "support").variants[1].weight == 10
    reqs, fb = shared.evidence().load("support")
    assert [r["id"] for r in reqs] == ["chatcmpl-1"] and len(fb) == 1
    assert shared.push("support", make_adapter(tmp_path / "c"), LINEAGE).version == 4
    assert json.loads((shared.get("support@1").path / "lineage.json").read_text())["version"] == 1
    second = migrate()  # idempotent: nothing copied twice
    assert "copied 0 version(s)" in second and len(shared.evidence().load("support")[1]) == 1


def test_migrate_refuses_a_target_with_other_files_under_the_same_number(
    tmp_path: Path, postgres: Postgres
) -> None:
    src = Registry(tmp_path / "src")
    src.push("x", make_adapter(tmp_path / "a", seed=1), LINEAGE)
    url = postgres.new_database()
    Registry(url, tmp_path / "art").push("x", make_adapter(tmp_path / "b", seed=2), LINEAGE)
    out = CliRunner().invoke(
        cli,
        [
            "registry",
            "migrate",
            "--registry",
            str(tmp_path / "src"),
            "--to",
            url,
            "--artifacts",
            str(tmp_path / "art"),
        ],
    )
    assert out.exit_code == 1 and "x@1 exists in both registries with different files" in out.output
    assert "Traceback" not in out.output


def test_a_database_registry_needs_its_artifact_store_only_for_files(
    tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LORA_PLATFORM_ARTIFACTS", raising=False)
    url = postgres.new_database()
    Registry(url, tmp_path / "art").push("x", make_adapter(tmp_path / "a"), LINEAGE)
    listed = CliRunner().invoke(cli, ["registry", "list", "--registry", url])
    assert listed.exit_code == 0 and "x@1" in listed.output and PASSWORD not in listed.output
    shown = CliRunner().invoke(cli, ["registry", "show", "x@1", "--registry", url])
    assert shown.exit_code == 1 and "--artifacts" in shown.output
    ok = CliRunner().invoke(
        cli, ["registry", "show", "x@1", "--registry", url, "--artifacts", str(tmp_path / "art")]
    )
    assert ok.exit_code == 0 and "x@1" in ok.output
    assert "LORA_PLATFORM_ARTIFACTS" not in os.environ  # the flag lasts as long as the command
    down = CliRunner().invoke(
        cli, ["registry", "list", "--registry", "postgresql://u:Sup3rSecret@127.0.0.1:1/db"]
    )
    assert down.exit_code == 1 and "unavailable" in down.output and "Sup3rSecret" not in down.output
    assert "Traceback" not in down.output
