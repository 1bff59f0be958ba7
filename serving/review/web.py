"""The review pages: reviewers rate blind pairs in the browser; the results page with CSV and chart.

Server-rendered (Jinja2, autoescaped: prompts and answers are user data) with one small script for
keyboard shortcuts and saving each answer as it is given (`POST .../rating`, JSON). The same router
serves `platform review serve` (its own app, `create_review_app`) and `/review/` of `platform serve`
when an admin key is set; there a reviewer gives the admin key or their own invite
(`platform review invite`) once on `/review/login` (kept in an HttpOnly, SameSite=Strict cookie,
Secure over HTTPS) or sends it as a Bearer header. An invite rates as its own reviewer only, does
not see the results pages, and never reaches `/admin`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from registry import reviews as rv
from registry.errors import ConflictError
from registry.store import Registry
from serving.deps import bearer_token, key_matches
from serving.errors import PermissionDeniedError
from serving.guard import Guard

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
COOKIE = "lp_review_key"


def _admin_key(request: Request) -> str | None:
    settings = getattr(request.app.state, "settings", None)
    return getattr(settings, "admin_key", None)


@dataclass(frozen=True)
class Access:
    """Who a request is: `reviewer` None may act as any reviewer (the admin key, or the open pages
    of `platform review serve` without a key); an invite acts as its own reviewer only."""

    reviewer: str | None
    admin: bool

    def as_reviewer(self, name: str) -> str:
        """The reviewer name this request may rate as (403 for another reviewer's name)."""
        name = rv.check_reviewer(name)
        if self.reviewer is not None and name != self.reviewer:
            raise PermissionDeniedError(
                f"you are signed in as {self.reviewer!r} and cannot act as another reviewer",
                code="wrong_reviewer",
            )
        return name

    def require_admin(self) -> None:
        if not self.admin:
            raise PermissionDeniedError(
                "results are for the admin (reviewers rate blind)", code="admin_key_required"
            )


def reviewer_access(request: Request) -> Access:
    """Open in `platform review serve` without a key; else the admin key or a reviewer's invite
    token (Bearer header, or the cookie `/review/login` sets)."""
    key = _admin_key(request)
    if getattr(request.app.state, "review_open", False) and key is None:
        return Access(None, True)
    if key is None:
        raise PermissionDeniedError("review pages are disabled: start the server with --admin-key")
    token = bearer_token(request.headers)
    given = token if token is not None else request.cookies.get(COOKIE)
    if key_matches(given, key):
        return Access(None, True)
    who = get_registry(request).invites().reviewer_for(given) if given else None
    if who is None:
        raise PermissionDeniedError(
            "this page needs the admin key or an invite: open /review/login", code="admin_key_required"
        )
    return Access(who, False)


def get_registry(request: Request) -> Registry:
    own: Registry | None = getattr(request.app.state, "review_registry", None)
    if own is not None:
        return own
    from serving.deps import get_state

    return get_state(request).registry


Reg = Annotated[Registry, Depends(get_registry)]
Reviewer = Annotated[str, Query(min_length=1, max_length=64)]
Who = Annotated[Access, Depends(reviewer_access)]
router = APIRouter(prefix="/review")
pages = APIRouter()


class RatingBody(BaseModel):
    reviewer: str = Field(min_length=1, max_length=64)
    criterion: str | None = Field(None, max_length=64)
    side: str | None = Field(None, max_length=8)
    score: int | None = None
    preference: str | None = Field(None, max_length=8)


class SkipBody(BaseModel):
    reviewer: str = Field(min_length=1, max_length=64)


def _html(request: Request, template: str, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, template, context)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return _html(request, "login.html", failed=False)


@router.post("/login", response_model=None)
async def login(request: Request) -> Response:
    """Check the admin key or invite typed into the form; on success keep it in a cookie for
    /review/ (HttpOnly, SameSite=Strict, and Secure when the page came over HTTPS)."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (form.get("key") or [""])[0].strip()
    key = _admin_key(request)
    known = key_matches(given, key) or (
        bool(given)
        and await run_in_threadpool(get_registry(request).invites().reviewer_for, given) is not None
    )
    if not known:
        page = _html(request, "login.html", failed=True)
        page.status_code = 403
        return page
    response = RedirectResponse("/review/", status_code=303)
    secure = _over_https(request)
    response.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/review", secure=secure)
    return response


def _over_https(request: Request) -> bool:
    """The browser reached us over HTTPS: directly, or through a proxy that says so."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


@pages.get("/", response_class=HTMLResponse)
def index(request: Request, reg: Reg, who: Who) -> HTMLResponse:
    return _html(request, "index.html", reviews=reg.reviews().list_reviews())


@pages.get("/{name}/", response_class=HTMLResponse)
def start(request: Request, name: str, reg: Reg, who: Who) -> HTMLResponse:
    review = reg.reviews().get(name)
    return _html(
        request, "start.html", review=review, progress=reg.reviews().progress(name), signed_in_as=who.reviewer
    )


@pages.get("/{name}/next")
def next_item(name: str, reviewer: Reviewer, reg: Reg, who: Who) -> RedirectResponse:
    """The reviewer's next item (resuming an unfinished one first), or the end page."""
    reviewer = who.as_reviewer(reviewer)
    index = reg.reviews().assign_next(name, reviewer)
    quoted = quote(reviewer)
    target = (
        f"/review/{quote(name)}/done?reviewer={quoted}"
        if index is None
        else (f"/review/{quote(name)}/item/{index}?reviewer={quoted}")
    )
    return RedirectResponse(target, status_code=303)


@pages.get("/{name}/item/{index}", response_class=HTMLResponse)
def item_page(
    request: Request, name: str, index: int, reviewer: Reviewer, reg: Reg, who: Who
) -> HTMLResponse:
    reviewer = who.as_reviewer(reviewer)
    review = reg.reviews().get(name)
    it = reg.reviews().item(name, index)
    seen = reg.reviews().history(name, reviewer)
    if index not in seen:
        raise ConflictError(f"item {index} of review {name!r} was not handed to {reviewer!r}")
    rating = reg.reviews().rating(name, index, reviewer)
    position = seen.index(index)
    return _html(
        request,
        "item.html",
        review=review,
        rubric=review.spec.parsed_rubric,
        item=it,
        reviewer=reviewer,
        left=it.answer_a if it.a_on_left else it.answer_b,
        right=it.answer_b if it.a_on_left else it.answer_a,
        state=_screen_state(it, rating),
        previous=seen[position - 1] if position > 0 else None,
        position=position + 1,
        progress=reg.reviews().progress(name, reviewer),
    )


def _screen_state(it: rv.Item, rating: rv.Rating | None) -> dict[str, Any]:
    """The saved rating in screen terms (left/right), for the page's script."""
    if rating is None:
        return {"scores": {}, "preference": None, "complete": False}
    to_side = {it.side_version("left"): "left", it.side_version("right"): "right", "tie": "tie"}
    scores = {f"{c}:{to_side[v]}": s for c, per in rating.scores.items() for v, s in per.items()}
    return {"scores": scores, "preference": to_side.get(rating.preference or ""), "complete": rating.complete}


@pages.post("/{name}/item/{index}/rating")
def save_rating(name: str, index: int, body: RatingBody, reg: Reg, who: Who) -> dict[str, Any]:
    """Save one answer (a criterion's score for one side, or the preference) at once."""
    r = reg.reviews().rate(
        name,
        index,
        who.as_reviewer(body.reviewer),
        criterion=body.criterion,
        side=body.side,
        score=body.score,
        preference=body.preference,
    )
    return {"saved": True, "complete": r.complete}


@pages.post("/{name}/item/{index}/skip")
def skip(name: str, index: int, body: SkipBody, reg: Reg, who: Who) -> dict[str, Any]:
    reg.reviews().skip(name, index, who.as_reviewer(body.reviewer))
    return {"skipped": True, "next": f"/review/{quote(name)}/next?reviewer={quote(body.reviewer.strip())}"}


@pages.get("/{name}/done", response_class=HTMLResponse)
def done(request: Request, name: str, reviewer: Reviewer, reg: Reg, who: Who) -> HTMLResponse:
    reviewer = who.as_reviewer(reviewer)
    review = reg.reviews().get(name)
    seen = reg.reviews().history(name, reviewer)
    return _html(
        request,
        "done.html",
        review=review,
        reviewer=rv.check_reviewer(reviewer),
        last=seen[-1] if seen else None,
        progress=reg.reviews().progress(name, reviewer),
    )


@pages.get("/{name}/report", response_class=HTMLResponse)
def report_page(request: Request, name: str, reg: Reg, who: Who) -> HTMLResponse:
    who.require_admin()
    from serving.experiments.review_report import report_for

    report = report_for(reg, name)
    return _html(request, "report.html", report=report, review=reg.reviews().get(name))


@pages.get("/{name}/report.png")
def report_png(name: str, reg: Reg, who: Who) -> Response:
    who.require_admin()
    from serving.experiments.review_report import build_report, plot

    review = reg.reviews().get(name)
    buf = io.BytesIO()
    plot(build_report(review, reg.reviews().items(name), reg.reviews().ratings(name)), buf)
    return Response(buf.getvalue(), media_type="image/png")


@pages.get("/{name}/ratings.csv")
def ratings_csv(name: str, reg: Reg, who: Who) -> Response:
    who.require_admin()
    from serving.experiments.review_report import ratings_csv as to_csv

    review = reg.reviews().get(name)
    text = to_csv(review, reg.reviews().items(name), reg.reviews().ratings(name))
    disposition = f'attachment; filename="review-{quote(name)}.csv"'
    return Response(text, media_type="text/csv", headers={"Content-Disposition": disposition})


router.include_router(pages)


MAX_BODY_BYTES = 4 << 20
"""Largest request body of `platform review serve` (the default of `platform serve`'s)."""


def create_review_app(
    registry: Registry,
    admin_key: str | None = None,
    allowed_hosts: Sequence[str] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """`platform review serve`: the review pages alone, on a registry (open unless `admin_key`),
    behind the same front door as `platform serve` (body limit, hosts, security headers)."""
    from types import SimpleNamespace

    from serving.app import install_error_handlers

    app = FastAPI(title="lora-platform review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review_registry = registry
    app.state.review_open = True
    app.state.settings = SimpleNamespace(admin_key=admin_key)
    app.add_middleware(Guard, max_bytes=max_body_bytes, allowed_hosts=allowed_hosts)
    install_error_handlers(app)
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/review/", status_code=307)

    return app
