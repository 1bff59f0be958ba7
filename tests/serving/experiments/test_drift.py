"""Drift: a version whose answers got longer is flagged by `platform monitor`; a steady one is not.

Rows are inserted into a real catalog (SQLite) as a server logging payloads would write them."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from registry.payloads import PayloadRecord
from registry.store import Registry

DAY = 86400.0


def _rows(
    version: str, start: float, n: int, tokens: tuple[int, int], rng: random.Random
) -> list[PayloadRecord]:
    rows = []
    for i in range(n):
        length = rng.randint(*tokens)
        rows.append(
            PayloadRecord(
                id=f"{version}-{start}-{i}",
                ts=start + i * 60,
                name=version.split("@")[0],
                version=version,
                request=json.dumps({"prompt": f"question {i}"}),
                completion="word " * length,
                finish_reason="stop",
                status="ok",
                latency_s=0.5 + rng.random() / 10,
                ttft_s=0.05 + rng.random() / 100,
                prompt_tokens=10,
                completion_tokens=length,
            )
        )
    return rows


def test_longer_completions_under_a_new_prompt_mix_are_flagged_and_a_steady_version_is_not(
    tmp_path: Path,
) -> None:
    registry, rng, now = Registry(tmp_path / "registry"), random.Random(7), time.time()
    first = now - 10 * DAY
    store = registry.payloads()
    store.insert(_rows("support@1", first, 80, (15, 25), rng))  # first days in service
    store.insert(_rows("support@1", now - DAY / 2, 80, (35, 50), rng))  # new prompt mix: longer answers
    store.insert(_rows("contact@1", first, 80, (15, 25), rng))
    store.insert(_rows("contact@1", now - DAY / 2, 80, (15, 25), rng))
    registry.close()

    def monitor(name: str) -> dict[str, object]:
        args = [
            "monitor",
            name,
            "--registry",
            str(tmp_path / "registry"),
            "--reference",
            "3d",
            "--window",
            "1d",
        ]
        result = CliRunner().invoke(cli, [*args, "--json"])
        assert result.exit_code == 0, result.output
        (version,) = json.loads(result.output)["versions"]
        return version  # type: ignore[no-any-return]

    drifted, steady = monitor("support"), monitor("contact")
    assert "completion_tokens" in drifted["moved"]  # type: ignore[operator]
    length = next(s for s in drifted["signals"] if s["signal"] == "completion_tokens")  # type: ignore[attr-defined]
    assert length["current"] > length["reference"] and length["p_value"] < 0.01
    assert steady["moved"] == []

    table = CliRunner().invoke(cli, ["monitor", "support", "--registry", str(tmp_path / "registry")])
    assert table.exit_code == 0 and "support@1" in table.output and "completion_tokens" in table.output


def test_monitor_without_logged_traffic_says_how_to_log_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["monitor", "support", "--registry", str(tmp_path / "r")])
    assert result.exit_code == 1 and "--log-payloads support" in result.output
    bad = CliRunner().invoke(
        cli, ["monitor", "support", "--window", "soon", "--registry", str(tmp_path / "r")]
    )
    assert bad.exit_code == 2 and "--window" in bad.output
