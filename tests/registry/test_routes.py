"""A/B routes in the registry: validation, promotion, and the report over recorded evidence."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.errors import ConflictError, NotFoundError, RegistryError
from registry.evidence_store import RequestRecord
from registry.routes import (
    get_route,
    list_routes,
    parse_variant,
    promote,
    set_weights,
    start_route,
    stop_route,
)
from registry.store import Registry
from serving.experiments.evidence import EvidenceWriter
from tests.registry.test_store import LINEAGE, make_adapter


@pytest.fixture
def reg(registry_location: str, tmp_path: Path) -> Registry:
    r = Registry(registry_location)
    a = make_adapter(tmp_path / "a")
    for _ in range(3):
        r.push("support", a, LINEAGE)
    r.push("other", a, LINEAGE)
    r.push("foreign", a, {**LINEAGE, "base_model_sha256": "cd" * 32})
    return r


def test_start_set_stop(reg: Registry) -> None:
    before = reg.changes()
    route = start_route(reg, "support", [("support@1", 90), ("support@2", 10)])
    assert [v.ref for v in route.variants] == ["support@1", "support@2"] and reg.changes() > before
    set_weights(reg, "support", [("support@1", 50), ("support@2", 50)])
    got = get_route(reg, "support")
    assert [v.weight for v in got.variants] == [50, 50] and got.history[0]["variants"][0]["weight"] == 90
    stop_route(reg, "support")
    assert list_routes(reg) == []


@pytest.mark.parametrize(
    ("variants", "error", "match"),
    [
        ([("support@1", 0), ("support@2", 0)], RegistryError, "sum to a positive number"),
        ([("support@1", -1), ("support@2", 5)], RegistryError, "must be >= 0"),
        ([("support@9", 1)], NotFoundError, "support@9"),
        ([("support@1", 1), ("foreign@1", 1)], RegistryError, "different base models"),
        ([("support@1", 1), ("support@1", 1)], RegistryError, "appears twice"),
        ([], RegistryError, "at least one"),
    ],
)
def test_bad_routes_are_refused_and_nothing_changes(reg: Registry, variants, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        start_route(reg, "support", variants)
    assert list_routes(reg) == []


def test_a_route_cannot_hide_another_adapter(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(ConflictError, match="would hide the adapter named 'other'"):
        start_route(reg, "other", [("support@1", 1)])
    start_route(reg, "newname", [("support@1", 1), ("other@1", 1)])
    with pytest.raises(ConflictError, match="A/B route over other adapters"):
        reg.push("newname", make_adapter(tmp_path / "b"), LINEAGE)


def test_promote_moves_the_alias_and_ends_the_route(reg: Registry) -> None:
    reg.set_alias("support@1", "prod")
    start_route(reg, "support", [("support@1", 90), ("support@2", 10)])
    with pytest.raises(ConflictError, match="A/B route 'support'"):
        reg.remove("support@2")
    with pytest.raises(RegistryError, match="not a variant"):
        promote(reg, "support", "support@3")
    assert promote(reg, "support", "support@2") == "support:prod"
    assert reg.get("support:prod").ref == "support@2" and list_routes(reg) == []


def test_variant_syntax() -> None:
    assert parse_variant("support@3=90") == ("support@3", 90.0)
    with pytest.raises(RegistryError, match="REF=WEIGHT"):
        parse_variant("support@3")
    with pytest.raises(RegistryError, match="not a number"):
        parse_variant("support@3=lots")


def test_report_statistics_match_a_hand_computed_case(
    reg: Registry, registry_location: str, tmp_path: Path
) -> None:
    """45/100 thumbs up on A, 60/100 on B: z = 2.124, p = 0.0337, B better; latency differs too."""
    start_route(reg, "support", [("support@1", 50), ("support@2", 50)])
    writer = EvidenceWriter(reg.evidence())
    now = time.time()
    for variant, latency in (("support@1", 0.2), ("support@2", 0.4)):
        for i in range(100):
            cid = f"{variant}-{i}"
            writer.record(
                RequestRecord(cid, now, "support", variant, f"u{i}", latency + i / 1000, 0.05, 10, 5, "ok")
            )
    writer.close()
    for variant, ups in (("support@1", 45), ("support@2", 60)):
        w = EvidenceWriter(reg.evidence())
        for i in range(100):
            w.feedback(f"{variant}-{i}", "support", variant, None, int(i < ups), None)
        w.close()
    png = tmp_path / "ab.png"
    out = CliRunner().invoke(
        cli, ["ab", "report", "support", "--json", "--png", str(png), "--registry", registry_location]
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    a, b = report["variants"]["support@1"], report["variants"]["support@2"]
    assert (a["requests"], b["requests"], a["feedback"]) == (100, 100, 100)
    assert a["thumbs_up_rate"]["mean"] == 0.45 and b["thumbs_up_rate"]["mean"] == 0.6
    assert a["latency_p50_s"] == pytest.approx(0.2495)
    thumbs = report["comparisons"][0]["thumbs_up"]
    assert thumbs["statistic"] == pytest.approx(2.124, abs=1e-3) and thumbs["p_value"] == pytest.approx(
        0.0337, abs=1e-3
    )
    assert "support@2 is better than support@1 on thumbs_up" in report["verdict"]
    assert "support@2 is worse than support@1 on latency" in report["verdict"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_report_says_when_there_is_not_enough_data(reg: Registry, registry_location: str) -> None:
    start_route(reg, "support", [("support@1", 50), ("support@2", 50)])
    writer = EvidenceWriter(reg.evidence())
    for i in range(6):
        writer.record(
            RequestRecord(
                f"r{i}", time.time(), "support", f"support@{i % 2 + 1}", None, 0.1, 0.01, 1, 1, "ok"
            )
        )
    writer.close()
    out = CliRunner().invoke(cli, ["ab", "report", "support", "--registry", registry_location])
    assert out.exit_code == 0 and "not enough data yet" in out.output


def test_cli_errors_are_clear(reg: Registry, registry_location: str) -> None:
    out = CliRunner().invoke(
        cli, ["ab", "start", "support", "--variant", "support@1=0", "--registry", registry_location]
    )
    assert out.exit_code == 1 and "positive number" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(cli, ["ab", "report", "ghost", "--registry", registry_location])
    assert out.exit_code == 1 and "ghost" in out.output
