"""The registry (both backends where the test needs no folder layout): round trip, integrity, aliases, concurrency and crash safety with real processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.errors import (
    ConflictError,
    IntegrityError,
    InvalidAdapterError,
    InvalidReferenceError,
    NotFoundError,
    RegistryError,
)
from registry.refs import parse_ref
from registry.store import Registry
from tests.serving.fixtures import wait_until

LINEAGE = {
    "base_model": "embedded/tiny-llama",
    "base_model_sha256": "ab" * 32,
    "metrics": {"adapter": {"exact_match": 0.5}},
}


def make_adapter(folder: Path, seed: int = 0, size: int = 64) -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(
                4, size, generator=g
            ),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(
                size, 4, generator=g
            ),
        },
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    )
    return folder


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return make_adapter(tmp_path / "adapter")


def test_push_show_load_round_trip(registry_location: str, adapter: Path) -> None:
    reg = Registry(registry_location)
    v1 = reg.push("support", adapter, LINEAGE)
    v2 = reg.push("support", adapter, LINEAGE)
    assert (v1.ref, v2.ref, v2.parent) == ("support@1", "support@2", 1)
    assert reg.get("support").version == 2
    assert reg.get("support@1").version == 1
    reg.set_alias("support@1", "prod")
    assert reg.get("support:prod").ref == "support@1"
    assert (reg.get("support@1").path / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors"
    ).read_bytes()
    assert reg.get("support@2").lineage["base_model"] == "embedded/tiny-llama"


def test_alias_moves_are_atomic_and_idempotent(registry_location: str, adapter: Path) -> None:
    reg = Registry(registry_location)
    reg.push("a", adapter, LINEAGE)
    reg.push("a", adapter, LINEAGE)
    before = reg.changes()
    _, moved = reg.set_alias("a@1", "prod")
    _, again = reg.set_alias("a@1", "prod")
    assert (moved, again) == (True, False)
    reg.set_alias("a@2", "prod")
    assert reg.get("a:prod").version == 2
    assert reg.changes() > before
    with pytest.raises(ConflictError, match="reserved"):
        reg.set_alias("a@1", "latest")


@pytest.mark.parametrize(
    "ref",
    [
        "../etc",
        "a/b",
        "A",
        "",
        "a@0",
        "a@x",
        "a:..",
        "a:b/c",
        "x" * 65,
        "/abs",
        "a@1@2",
        "a:b:c",
        "..",
        "a\x00",
    ],
)
def test_malformed_references_are_refused_before_touching_paths(
    ref: str, registry_root: Path, adapter: Path
) -> None:
    reg = Registry(registry_root)
    with pytest.raises(InvalidReferenceError):
        parse_ref(ref)
    with pytest.raises(RegistryError):
        reg.get(ref)
    with pytest.raises(RegistryError):
        reg.push(ref, adapter, LINEAGE)
    assert not list((registry_root / "versions").iterdir())


def test_unknown_things_get_errors_naming_the_reference(registry_location: str, adapter: Path) -> None:
    reg = Registry(registry_location)
    with pytest.raises(NotFoundError, match="no adapter named 'ghost'"):
        reg.get("ghost")
    reg.push("real", adapter, LINEAGE)
    with pytest.raises(NotFoundError, match=r"real@7: version 7 of 'real' does not exist"):
        reg.get("real@7")
    with pytest.raises(NotFoundError, match=r"real:prod: alias 'prod'"):
        reg.get("real:prod")


def test_tampered_missing_and_extra_files_fail_verification(registry_location: str, adapter: Path) -> None:
    reg = Registry(registry_location)
    v = reg.push("t", adapter, LINEAGE)
    weights = v.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"t@1: adapter_model.safetensors does not match its sha256"):
        reg.get("t@1")
    v2 = reg.push("t", adapter, LINEAGE)
    (v2.path / "evil.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"t@2: unexpected extra file"):
        reg.get("t@2")
    v3 = reg.push("t", adapter, LINEAGE)
    (v3.path / "adapter_config.json").unlink()
    with pytest.raises(IntegrityError, match=r"t@3: missing file"):
        reg.get("t@3")
    report = reg.verify_all()
    assert all(report[r] for r in ("t@1", "t@2", "t@3"))


def test_a_server_reload_reads_only_files_changed_since_it_hashed_them(
    registry_location: str, adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server loading a version again (rehash_unchanged=False) does not read the files it hashed
    before and that have not changed since; a file written since is read and refused; a file just
    written is read every time (a write in the same clock tick would leave its times unchanged);
    plain verification reads every byte."""
    import registry.manifest as manifest

    reg = Registry(registry_location)
    v = reg.push("t", adapter, LINEAGE)
    reads: list[str] = []
    real = manifest.file_sha256
    monkeypatch.setattr(manifest, "file_sha256", lambda p: reads.append(p.name) or real(p))
    files = len(json.loads((v.path / "manifest.json").read_text())["files"])

    reg.get("t@1", rehash_unchanged=False)
    reg.get("t@1", rehash_unchanged=False)
    assert len(reads) == 2 * files, "files written within RACY_NS are hashed every time"
    newest = max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in v.path.iterdir())
    wait_until(lambda: time.time_ns() - newest > manifest.RACY_NS + 10**8, 10)
    reg.get("t@1", rehash_unchanged=False)
    assert len(reads) == 3 * files
    reg.get("t@1", rehash_unchanged=False)
    assert len(reads) == 3 * files, "unchanged files hashed before must not be read again"
    reg.get("t@1")
    assert len(reads) == 4 * files, "plain verification reads every file"

    weights = v.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size
    with pytest.raises(IntegrityError, match=r"t@1: adapter_model.safetensors does not match its sha256"):
        reg.get("t@1", rehash_unchanged=False)


def test_bad_adapters_are_refused_and_nothing_is_stored(registry_root: Path, tmp_path: Path) -> None:
    reg = Registry(registry_root)
    pickled = make_adapter(tmp_path / "p")
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidAdapterError, match="pickle weights"):
        reg.push("x", pickled, LINEAGE)
    truncated = make_adapter(tmp_path / "t")
    w = truncated / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(InvalidAdapterError, match="truncated"):
        reg.push("x", truncated, LINEAGE)
    no_cfg = make_adapter(tmp_path / "n")
    (no_cfg / "adapter_config.json").unlink()
    with pytest.raises(InvalidAdapterError, match=r"missing adapter_config\.json"):
        reg.push("x", no_cfg, LINEAGE)
    with pytest.raises(RegistryError, match="lineage lacks 'base_model_sha256'"):
        reg.push("x", make_adapter(tmp_path / "ok"), {"base_model": "m"})
    assert reg.list_versions() == []
    assert not list((registry_root / ".staging").iterdir())


def test_rm_refuses_a_version_an_alias_points_at(registry_location: str, adapter: Path) -> None:
    reg = Registry(registry_location)
    reg.push("r", adapter, LINEAGE)
    reg.set_alias("r@1", "prod")
    with pytest.raises(ConflictError, match=r"r@1 is in use by alias r:prod"):
        reg.remove("r@1")
    assert reg.get("r@1")
    reg.remove("r@1", force=True)
    with pytest.raises(NotFoundError):
        reg.get("r@1")
    # a removed number is never issued again: r@1 keeps meaning the weights it meant
    assert reg.push("r", adapter, LINEAGE).version == 2


def test_a_folder_that_is_not_a_registry_is_refused(tmp_path: Path) -> None:
    (tmp_path / "stuff.txt").write_text("hi")
    with pytest.raises(RegistryError, match="is not a registry"):
        Registry(tmp_path)


def _open_when_told(root: str, go: Any, ready: mp.Queue, out: mp.Queue) -> None:  # type: ignore[type-arg]
    ready.put(os.getpid())
    go.wait(30)  # imports are done: every process opens the fresh folder at about once
    try:
        Registry(root)
        out.put("ok")
    except RegistryError as exc:
        out.put(str(exc))


def test_processes_creating_a_fresh_registry_at_once_all_open_it(tmp_path: Path) -> None:
    """Two first users of a registry (or every rank of a distributed run) create it at once."""
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    for attempt in range(2):
        root, go = tmp_path / f"fresh{attempt}", ctx.Event()
        args = (str(root), go, ready, q)
        procs = [ctx.Process(target=_open_when_told, args=args) for _ in range(4)]
        for p in procs:
            p.start()
        for _ in procs:  # every interpreter has imported the registry
            ready.get(timeout=120)
        go.set()
        got = [q.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert got == ["ok"] * 4, got
        assert Registry(root).list_versions() == [] and not (root / ".create.lock").exists()


def _push_many(root: str, adapter: str, n: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    reg = Registry(root)
    out.put([reg.push("shared", Path(adapter), LINEAGE).version for _ in range(n)])


def test_parallel_pushes_from_processes_get_distinct_versions(registry_location: str, adapter: Path) -> None:
    Registry(registry_location)
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_push_many, args=(registry_location, str(adapter), 5, q)) for _ in range(4)]
    for p in procs:
        p.start()
    got = sorted(v for _ in procs for v in q.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
    assert got == list(range(1, 21))
    assert all(err is None for err in Registry(registry_location).verify_all().values())


_SLOW_PUSH = """
import sys, time, shutil
from pathlib import Path
import registry.store as store
real = shutil.copyfile
def slow(src, dst, *a, **k):
    time.sleep(0.2)
    return real(src, dst, *a, **k)
store.shutil.copyfile = slow
reg = store.Registry(sys.argv[1])
print("ready", flush=True)
while True:
    reg.push("crash", Path(sys.argv[2]), {"base_model": "m", "base_model_sha256": "s"})
"""


def test_killing_a_pushing_process_leaves_a_verifiable_registry(
    registry_location: str, adapter: Path
) -> None:
    big = make_adapter(adapter.parent / "big", size=4096)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PUSH, registry_location, str(big)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    shared = registry_location.startswith("postgresql://")  # then the fixture set the artifact folder
    files = Path(os.environ["LORA_PLATFORM_ARTIFACTS"] if shared else registry_location)
    versions, staging = files / "versions" / "crash", files / ".staging"

    def mid_copy_after_several() -> bool:  # several pushes done, one in the middle of its copy
        done = versions.is_dir() and sum(1 for _ in versions.iterdir()) >= 2
        return done and staging.is_dir() and any(p.is_file() for p in staging.rglob("*"))

    try:
        wait_until(mid_copy_after_several, 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    reg = Registry(registry_location)
    report = reg.verify_all()
    assert report and all(err is None for err in report.values())
    reg.gc()
    assert reg.push("crash", big, LINEAGE).version == len(report) + 1


def test_gc_removes_orphans_only(registry_root: Path, adapter: Path) -> None:
    reg = Registry(registry_root)
    reg.push("g", adapter, LINEAGE)
    orphan = registry_root / "versions" / "g" / "9"
    orphan.mkdir()
    (orphan / "junk").write_text("x")
    assert [Path(p) for p, _ in reg.gc().removed] == [orphan]
    assert reg.get("g@1")


def test_gc_keeps_a_fresh_staging_folder_and_removes_killed_pushes_when_told(
    registry_root: Path, adapter: Path
) -> None:
    """A push killed with SIGKILL leaves its staging folder: kept while it may still be running
    (younger than 1h), removed with --older-than 0s, or by default once it is old."""
    big = make_adapter(adapter.parent / "big", size=4096)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PUSH, str(registry_root), str(big)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    staging = registry_root / ".staging"
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    wait_until(lambda: any(staging.iterdir()), 30)  # a push is copying (each file takes 0.2 s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed = sorted(staging.iterdir())
    assert killed
    old = registry_root / ".staging" / "an-old-killed-push"
    old.mkdir()
    (old / "adapter_model.safetensors").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for path in (old / "adapter_model.safetensors", old):
        os.utime(path, (two_hours_ago, two_hours_ago))

    def gc(*args: str) -> str:
        out = CliRunner().invoke(cli, ["registry", "gc", "--registry", str(registry_root), *args])
        assert out.exit_code == 0, out.output
        return out.output

    first = gc()
    assert (
        "removed 1 folder(s)" in first
        and "an-old-killed-push: staging folder of a push idle for 2.0h" in first
    )
    assert f"kept {len(killed)} staging folder(s)" in first and "may be a push in progress" in first
    assert sorted(staging.iterdir()) == killed
    second = gc("--older-than", "0s")
    assert f"removed {len(killed)} folder(s)" in second and not list(staging.iterdir())
    assert all(err is None for err in Registry(registry_root).verify_all().values())
    bad = CliRunner().invoke(
        cli, ["registry", "gc", "--registry", str(registry_root), "--older-than", "soon"]
    )
    assert bad.exit_code == 2 and "not a duration" in bad.output
