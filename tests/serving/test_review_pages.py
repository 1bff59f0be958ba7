"""The review pages refuse bad input with 4xx (never 5xx), escape user text, and sit behind the
admin key under `platform serve`."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from registry import reviews as rv
from registry.rubric import load_rubric
from registry.store import Registry
from serving.app import create_app
from serving.review.web import create_review_app
from serving.settings import ServeSettings


def _client(tmp_path: Path, key: str | None = None) -> TestClient:
    reg = Registry(tmp_path / "registry")
    spec = rv.ReviewSpec("bot@1", "bot@2", load_rubric().to_dict())
    item = rv.NewItem(
        [{"role": "user", "content": "<img src=x onerror=alert(1)>"}], "</pre><b>a</b>", "b", True
    )
    reg.reviews().create("r1", spec, [item])
    return TestClient(create_review_app(reg, key))


def test_bad_input_is_4xx_and_text_is_escaped(tmp_path: Path) -> None:
    c = _client(tmp_path)
    page = c.get("/review/r1/next", params={"reviewer": "ann"})
    assert page.status_code == 200 and "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "<img src=x" not in page.text and "&lt;/pre&gt;&lt;b&gt;a&lt;/b&gt;" in page.text
    rate = "/review/r1/item/0/rating"
    for path, body, status in (
        (rate, {"reviewer": "ann", "criterion": "tone", "side": "left", "score": 7}, 400),
        (rate, {"reviewer": "ann", "preference": "up"}, 400),
        (rate, {"reviewer": "ann", "criterion": "tone"}, 400),
        (rate, {"reviewer": "", "preference": "tie"}, 400),
        (rate, {"reviewer": "eve", "preference": "tie"}, 409),
        (rate, "not json", 400),
        ("/review/r1/item/5/rating", {"reviewer": "ann", "preference": "tie"}, 404),
        ("/review/nope/item/0/rating", {"reviewer": "ann", "preference": "tie"}, 404),
        ("/review/r1/item/x/skip", {"reviewer": "ann"}, 400),
    ):
        r = c.post(path, json=body) if not isinstance(body, str) else c.post(path, content=body)
        assert r.status_code == status, (path, body, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    for path, status in (
        ("/review/nope/", 404),
        ("/review/r1/item/0", 400),  # no reviewer
        ("/review/r1/item/0?reviewer=eve", 409),
        ("/review/r1/item/99?reviewer=ann", 404),
        ("/review/r1/done?reviewer=%20", 400),
    ):
        assert c.get(path).status_code == status, path
    assert c.post(rate, json={"reviewer": "ann", "preference": "tie"}).json() == {
        "saved": True,
        "complete": False,
    }
    assert c.get("/review/r1/report").status_code == 200
    assert c.get("/review/r1/ratings.csv").text.startswith("item,reviewer,complete")


def test_the_admin_key_guards_the_pages(tmp_path: Path) -> None:
    c = _client(tmp_path, key="s3cret-admin-key-0123")
    assert c.get("/review/").status_code == 403
    assert c.get("/review/", headers={"Authorization": "Bearer s3cret-admin-key-0123"}).status_code == 200
    assert c.post("/review/login", data={"key": "wrong"}).status_code == 403
    assert (
        c.post("/review/login", data={"key": "s3cret-admin-key-0123"}, follow_redirects=False).status_code
        == 303
    )
    assert c.get("/review/").status_code == 200  # the cookie
    assert "/review/{name}/" not in {getattr(r, "path", "") for r in create_app(ServeSettings()).routes}
    paths = {getattr(r, "path", "") for r in create_app(ServeSettings(admin_key="k" * 16)).routes}
    assert "/review/{name}/" in paths
