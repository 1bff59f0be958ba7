"""A small in-memory fake of the Hugging Face Hub's HTTP side, for the real `huggingface_hub` client.

Only the endpoints the registry's push and pull use: create repo, preupload (every file
"regular"), commit (NDJSON), tags, revision info and file resolve. Writes need the token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from testkit.servers import app_in_thread

TOKEN = "hf_fake_token"


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    private: bool = True

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision) or self.tags.get(revision)


def make_app(repos: dict[str, Repo], base_url: list[str]) -> FastAPI:
    app = FastAPI()

    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {TOKEN}"

    def not_found(what: str) -> JSONResponse:
        return JSONResponse(
            {"error": f"{what} not found"},
            status_code=404,
            headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": f"{what} not found"},
        )

    def unauthorized() -> JSONResponse:
        return JSONResponse(
            {"error": "Invalid credentials"},
            status_code=401,
            headers={"X-Error-Message": "Invalid credentials in Authorization header"},
        )

    @app.post("/api/repos/create")
    async def create(request: Request) -> Any:
        if not authorized(request):
            return unauthorized()
        body = await request.json()
        repo_id = (
            f"{body.get('organization') or 'user'}/{body['name']}"
            if "/" not in body["name"]
            else body["name"]
        )
        if repo_id in repos:
            return JSONResponse(
                {"error": "You already created this model repo", "url": f"{base_url[0]}/{repo_id}"},
                status_code=409,
            )
        repos[repo_id] = Repo(private=bool(body.get("private", True)))
        return {"url": f"{base_url[0]}/{repo_id}", "name": repo_id}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> Any:
        content = (await request.json()).get("content", "")
        if "base_model:" not in content:
            return JSONResponse({"error": "model card metadata lacks base_model"}, status_code=400)
        return {"warnings": []}

    def at(org: str, name: str, revision: str) -> tuple[Repo, str] | None:
        """The repo and the commit a revision (branch, tag or sha) names, None if either is missing."""
        repo = repos.get(f"{org}/{name}")
        oid = repo.resolve(revision) if repo else None
        return None if repo is None or oid is None else (repo, oid)

    @app.post("/api/models/{org}/{name}/preupload/{revision}")
    async def preupload(org: str, name: str, revision: str, request: Request) -> Any:
        if f"{org}/{name}" not in repos:
            return not_found("repo")
        files = (await request.json())["files"]
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    @app.post("/api/models/{org}/{name}/commit/{revision}")
    async def commit(org: str, name: str, revision: str, request: Request) -> Any:
        if not authorized(request):
            return unauthorized()
        repo = repos.get(f"{org}/{name}")
        if repo is None:
            return not_found("repo")
        parent = repo.resolve(revision)
        files = dict(repo.commits.get(parent, {})) if parent else {}
        for line in (await request.body()).splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        oid = hashlib.sha1(
            json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode()
            + str(time.time_ns()).encode()
        ).hexdigest()
        repo.commits[oid] = files
        repo.refs[revision] = oid
        return {"commitUrl": f"{base_url[0]}/{org}/{name}/commit/{oid}", "commitOid": oid}

    @app.post("/api/models/{org}/{name}/tag/{revision}")
    async def tag(org: str, name: str, revision: str, request: Request) -> Any:
        if not authorized(request):
            return unauthorized()
        found = at(org, name, revision)
        if found is None:
            return not_found("revision")
        repo, oid = found
        repo.tags[(await request.json())["tag"]] = oid
        return {}

    @app.delete("/api/models/{org}/{name}/tag/{tag}")
    async def delete_tag(org: str, name: str, tag: str, request: Request) -> Any:
        repo = repos.get(f"{org}/{name}")
        if repo is None or tag not in repo.tags:
            return not_found("tag")
        del repo.tags[tag]
        return {}

    @app.get("/api/models/{org}/{name}/revision/{revision:path}")
    async def info(org: str, name: str, revision: str) -> Any:
        found = at(org, name, revision)
        if found is None:
            return not_found("revision")
        repo, oid = found
        files = repo.commits[oid]
        return {
            "id": f"{org}/{name}",
            "sha": oid,
            "private": repo.private,
            "siblings": [{"rfilename": f, "size": len(b)} for f, b in sorted(files.items())],
        }

    @app.get("/api/models/{org}/{name}/tree/{revision:path}")
    async def tree(org: str, name: str, revision: str) -> Any:
        found = at(org, name, revision)
        if found is None:
            return not_found("revision")
        repo, oid = found
        return [
            {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
            for f, b in sorted(repo.commits[oid].items())
        ]

    @app.api_route("/{org}/{name}/resolve/{revision}/{filename:path}", methods=["GET", "HEAD"])
    async def resolve(org: str, name: str, revision: str, filename: str, request: Request) -> Any:
        found = at(org, name, revision)
        if found is None or filename not in found[0].commits[found[1]]:
            return JSONResponse(
                {"error": "not found"}, status_code=404, headers={"X-Error-Code": "EntryNotFound"}
            )
        repo, oid = found
        data = repo.commits[oid][filename]
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
            "Content-Length": str(len(data)),
        }
        return Response(
            b"" if request.method == "HEAD" else data, headers=headers, media_type="application/octet-stream"
        )

    return app


@contextmanager
def fake_hub(port: int) -> Iterator[tuple[str, dict[str, Repo]]]:
    repos: dict[str, Repo] = {}
    url = f"http://127.0.0.1:{port}"
    with app_in_thread(make_app(repos, [url]), port):
        yield url, repos
