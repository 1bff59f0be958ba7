"""Review pages (#31 item 10): per-reviewer invites (no /admin, no rating as another reviewer,
revocable), the cookie Secure over HTTPS, security headers, allowed hosts, CSV cells that a
spreadsheet would run as formulas escaped."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli.main import cli
from registry import reviews as rv
from registry.rubric import load_rubric
from registry.store import Registry
from serving.app import create_app
from serving.review.web import COOKIE, create_review_app
from serving.settings import ServeSettings

ADMIN_KEY = "review-admin-key-0123"


def _registry(tmp_path: Path, prompt: str = "hi", answer: str = "a") -> Registry:
    reg = Registry(tmp_path / "registry")
    spec = rv.ReviewSpec("bot@1", "bot@2", load_rubric().to_dict(), reviewers_per_item=2)
    reg.reviews().create("r1", spec, [rv.NewItem([{"role": "user", "content": prompt}], answer, "b", True)])
    return reg


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_invite_rates_as_its_own_reviewer_only_and_is_revocable(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    c = TestClient(create_review_app(reg, ADMIN_KEY))
    ann = _bearer(reg.invites().invite("ann"))
    assert c.get("/review/", headers=ann).status_code == 200
    assert "Signed in as" in c.get("/review/r1/", headers=ann).text
    assert c.get("/review/r1/next?reviewer=ann", headers=ann, follow_redirects=False).status_code == 303
    rate = "/review/r1/item/0/rating"
    assert c.post(rate, json={"reviewer": "ann", "preference": "tie"}, headers=ann).status_code == 200
    # the admin hands the same item to bob; ann's invite cannot act as bob anywhere
    assert c.get(
        "/review/r1/next?reviewer=bob", headers=_bearer(ADMIN_KEY), follow_redirects=False
    ).is_redirect
    for method, path, body in (
        ("POST", rate, {"reviewer": "bob", "preference": "left"}),
        ("POST", "/review/r1/item/0/skip", {"reviewer": "bob"}),
        ("GET", "/review/r1/item/0?reviewer=bob", None),
        ("GET", "/review/r1/next?reviewer=bob", None),
        ("GET", "/review/r1/done?reviewer=bob", None),
    ):
        r = c.request(method, path, json=body, headers=ann)
        assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_reviewer", (path, r.text)
    assert reg.reviews().rating("r1", 0, "bob") is None
    # the results un-blind the versions: the admin's, not a reviewer's
    for path in ("/review/r1/report", "/review/r1/ratings.csv", "/review/r1/report.png"):
        assert c.get(path, headers=ann).status_code == 403, path
    assert c.get("/review/r1/ratings.csv", headers=_bearer(ADMIN_KEY)).status_code == 200
    # revoked: the next request is refused, header or cookie
    login = c.post("/review/login", data={"key": ann["Authorization"][7:]}, follow_redirects=False)
    assert login.status_code == 303
    assert c.get("/review/").status_code == 200  # the cookie
    assert reg.invites().revoke("ann") == 1
    assert c.get("/review/").status_code == 403
    assert c.get("/review/", headers=ann).status_code == 403
    assert c.post("/review/login", data={"key": ann["Authorization"][7:]}).status_code == 403


def test_an_invite_never_reaches_admin_under_platform_serve(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    token = reg.invites().invite("ann")
    app = create_app(ServeSettings(admin_key=ADMIN_KEY, registry=str(tmp_path / "registry")))
    c = TestClient(app)  # no lifespan: the front door answers before any engine is needed
    for path in ("/admin/adapters", "/admin/routes/x"):
        assert c.get(path, headers=_bearer(token)).status_code == 403, path
    c.cookies.set(COOKIE, token, path="/admin")
    assert c.get("/admin/adapters").status_code == 401


def test_the_cli_makes_lists_and_revokes_invites(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    where = ["--registry", str(tmp_path / "registry")]
    made = CliRunner().invoke(cli, ["review", "invite", "ann", *where])
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1]
    assert reg.invites().reviewer_for(token) == "ann"
    listed = CliRunner().invoke(cli, ["review", "invites", *where])
    assert "ann" in listed.output and token not in listed.output
    assert CliRunner().invoke(cli, ["review", "revoke", "ann", *where]).exit_code == 0
    assert reg.invites().reviewer_for(token) is None
    again = CliRunner().invoke(cli, ["review", "revoke", "ann", *where])
    assert again.exit_code == 1 and "no live invite" in again.output


@pytest.mark.parametrize(
    ("headers", "secure"),
    [({}, False), ({"X-Forwarded-Proto": "https"}, True), ({"X-Forwarded-Proto": "https, http"}, True)],
)
def test_the_login_cookie_is_secure_behind_https(
    tmp_path: Path, headers: dict[str, str], secure: bool
) -> None:
    c = TestClient(create_review_app(_registry(tmp_path), ADMIN_KEY))
    r = c.post("/review/login", data={"key": ADMIN_KEY}, headers=headers, follow_redirects=False)
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert ("; secure" in cookie) is secure


def test_https_requests_get_a_secure_cookie(tmp_path: Path) -> None:
    c = TestClient(create_review_app(_registry(tmp_path), ADMIN_KEY), base_url="https://review.test")
    r = c.post("/review/login", data={"key": ADMIN_KEY}, follow_redirects=False)
    assert "; secure" in r.headers["set-cookie"].lower()


def test_pages_carry_security_headers_and_answer_allowed_hosts_only(tmp_path: Path) -> None:
    app = create_review_app(_registry(tmp_path), allowed_hosts=["review.example.com"])
    c = TestClient(app, base_url="http://review.example.com")
    page = c.get("/review/")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    rebound = c.get("/review/", headers={"Host": "attacker.test"})
    assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "invalid_host"


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cells_that_start_a_formula_are_escaped(tmp_path: Path, text: str) -> None:
    reg = _registry(tmp_path, prompt=text, answer=text)
    reviewer = text if text.isprintable() else "ann"  # reviewer names are printable
    reg.reviews().assign_next("r1", reviewer)
    reg.reviews().rate("r1", 0, reviewer, preference="tie")
    body = TestClient(create_review_app(reg)).get("/review/r1/ratings.csv").text
    [row] = list(csv.DictReader(io.StringIO(body)))
    for field in ("prompt", "answer_a", *(["reviewer"] if reviewer == text else [])):
        assert row[field] == "'" + text, (field, row[field])
    assert row["item"] == "0" and row["answer_b"] == "b"
