"""Hugging Face Hub transport: one registry version <-> one Hub commit, through `huggingface_hub`.

    push: `platform registry push support@3 --to hf://org/repo`  -> one commit holding the version's
          files (adapter, manifest, lineage, model card), tagged `v3` and with one tag per alias.
    pull: `platform registry pull hf://org/repo[@revision] --as support` -> a new local version,
          every file checked against the pulled manifest, then the adapter against the base model
          it names (`registry.adapter.check_adapter`, as `registry add` does), lineage kept. The
          pulled lineage's base sha256 is a claim: it must equal the local base model's, and the
          version records the sha256 computed here.

The token comes from the usual places (`HF_TOKEN`, `huggingface-cli login`); `HF_ENDPOINT`
points the client at another Hub (tests use a local fake of the Hub's HTTP side).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.adapter import check_adapter, weight_shapes
from registry.basemodels import resolve_base_model
from registry.errors import IntegrityError, InvalidAdapterError, RegistryError
from registry.manifest import MANIFEST, verify
from registry.store import KEEP_FILES, Registry, Version

_HF_RE = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


class HubError(RegistryError):
    """The Hub refused or failed an upload or download."""


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"hf://{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def parse_hub_ref(text: str) -> HubRef:
    m = _HF_RE.match(text.strip())
    if not m:
        raise RegistryError(
            f"malformed Hub reference {text!r}: expected hf://ORG/REPO or hf://ORG/REPO@REVISION"
        )
    return HubRef(m["repo"], m["rev"])


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _api(token: str | None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=_endpoint(), token=token)


def push(registry: Registry, ref: str, target: str, token: str | None = None, private: bool = True) -> str:
    """Upload one verified version as one commit; returns the commit id."""
    from huggingface_hub import CommitOperationAdd

    hub = parse_hub_ref(target)
    v = registry.get(ref)  # verifies every file first
    api = _api(token)
    files = sorted(p for p in v.path.iterdir() if p.is_file())
    try:
        api.create_repo(hub.repo_id, private=private, exist_ok=True)
        commit = api.create_commit(
            hub.repo_id,
            operations=[
                CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=_upload(registry, v, p))
                for p in files
            ],
            commit_message=f"{v.ref} (lora-platform)",
            commit_description=f"base model {v.base_model} sha256 {v.base_sha256}",
            revision=hub.revision,
        )
        _retag(api, hub.repo_id, f"v{v.version}", commit.oid)
        for alias in v.aliases:
            _retag(api, hub.repo_id, alias, commit.oid)
    except RegistryError:
        raise
    except Exception as exc:  # huggingface_hub raises HTTP, auth and network errors of many types
        raise HubError(f"push {v.ref} to {hub}: {type(exc).__name__}: {exc}") from exc
    return str(commit.oid)


def _upload(registry: Registry, v: Version, path: Path) -> str | bytes:
    """The file to upload: the model card gets the version's human reviews, rollouts and later evaluations added."""
    if path.name != "README.md":
        return str(path)
    from registry.card import with_records

    return with_records(
        path.read_text(),
        registry.reviews().summaries_for(v.ref),
        registry.rollouts().outcomes_for(v.ref),
        registry.evaluations().for_version(v.name, v.version),
    ).encode()


def _retag(api: Any, repo_id: str, tag: str, oid: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    with contextlib.suppress(HfHubHTTPError):  # no such tag yet
        api.delete_tag(repo_id, tag=tag)
    api.create_tag(repo_id, tag=tag, revision=oid)


def pull(
    registry: Registry, source: str, name: str, token: str | None = None, base_model: str | None = None
) -> Version:
    """Download a Hub version, verify it against its manifest and its base model (`base_model`, else
    the one its lineage names), store it as a new local version."""
    from huggingface_hub import snapshot_download

    hub = parse_hub_ref(source)
    with tempfile.TemporaryDirectory(prefix="lora-pull-") as tmp:
        try:
            folder = Path(
                snapshot_download(
                    hub.repo_id,
                    revision=hub.revision,
                    local_dir=tmp,
                    token=token,
                    endpoint=_endpoint(),
                )
            )
        except Exception as exc:
            raise HubError(f"pull {hub}: {type(exc).__name__}: {exc}") from exc
        for junk in (folder / ".cache", folder / ".gitattributes"):
            if junk.is_dir():
                shutil.rmtree(junk)
            elif junk.exists():
                junk.unlink()
        if not (folder / MANIFEST).is_file():
            raise IntegrityError(
                f"{hub}: no {MANIFEST}; not a lora-platform version (push with `platform registry push`)"
            )
        verify(folder, None, str(hub))
        lineage = _checked_lineage(folder, hub, base_model)
        origin = {k: lineage.get(k) for k in ("name", "version", "parent")}
        lineage = {k: val for k, val in lineage.items() if k not in ("name", "version", "parent")}
        lineage["pulled_from"] = {"hub": str(hub), **origin}
        extra = {f: folder / f for f in KEEP_FILES if f != "lineage.json" and (folder / f).is_file()}
        return registry.push(name, folder, lineage, extra_files=extra)


def _checked_lineage(folder: Path, hub: HubRef, base_model: str | None) -> dict[str, Any]:
    """The pulled lineage, once the adapter fits the local base model it names and that model's
    weights are the ones the lineage claims; its base fields are then this machine's."""
    lineage_file = folder / "lineage.json"
    try:
        lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidAdapterError(f"{hub}: lineage.json is not valid JSON ({exc})") from exc
    if not isinstance(lineage, dict):
        raise InvalidAdapterError(f"{hub}: lineage.json is not a JSON object")
    named = base_model or lineage.get("base_model")
    if not isinstance(named, str) or not named:
        raise InvalidAdapterError(f"{hub}: its lineage names no base model; name one (base_model)")
    base = resolve_base_model(named)
    claimed = lineage.get("base_model_sha256")
    if claimed != base.weights_sha256:
        raise InvalidAdapterError(
            f"{hub}: its lineage says base weights sha256 {str(claimed)[:12]}..., but {base.id} here "
            f"has {base.short_sha}...: trained on other weights (or the lineage is wrong)"
        )
    check_adapter(folder, weight_shapes(base.path))
    return {**lineage, "base_model": base.id, "base_model_sha256": base.weights_sha256}
