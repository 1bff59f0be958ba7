"""The review flow in a real headless Chromium (Debian's `chromium` + `chromium-driver`, Selenium):
two reviewers rate 5 items each with the keyboard, one goes back to change a rating, the other
closes the browser mid-way and resumes; the report's win rate and agreement match what was typed.
Also writes the docs' screenshots (loadtests/results/review_page.png, review_report.png; docs/production-loop.md)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry import reviews as rv
from registry.rubric import load_rubric
from registry.store import Registry
from testkit.servers import ROOT, platform_cmd, stop_process, wait_ready
from tests.serving.fixtures import free_port, wait_until

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
RESULTS = ROOT / "loadtests" / "results"
PROMPTS = [
    "Where is my parcel? Order 1182 was due on Monday.",
    "Reset my password please, the link <b>expired</b>.",
    "<script>alert('prompt')</script> Cancel my subscription",
    "Can I get an invoice for March with our VAT number?",
    "The app crashes when I upload a photo larger than 10 MB.",
]
# what each reviewer types per item, in item order: six scores (left answer's criteria, then the
# right's), then the preference key (a = left, b = right, t = tie)
ANN = [
    ("453", "554", "b"),
    ("345", "223", "a"),
    ("555", "444", "a"),
    ("333", "333", "t"),
    ("234", "455", "b"),
]
BOB = [
    ("442", "553", "b"),
    ("344", "444", "b"),
    ("454", "343", "a"),
    ("343", "343", "t"),
    ("335", "554", "b"),
]


def _browser() -> Any:
    pytest.importorskip("selenium", reason="selenium is not installed (make setup)")
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip("no chromium: `apt-get install chromium chromium-driver` (make setup does it as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(DRIVER)), options=options)


@pytest.fixture
def review_server(tmp_path: Path) -> Iterator[tuple[str, Registry]]:
    """`platform review serve` on a registry holding one review set of 5 items (answers inserted)."""
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip("no chromium: `apt-get install chromium chromium-driver` (make setup does it as root)")
    registry = Registry(tmp_path / "registry")
    spec = rv.ReviewSpec("support@1", "support@2", load_rubric().to_dict(), reviewers_per_item=2)
    items = [
        rv.NewItem(
            [{"role": "user", "content": p}],
            f"Sorry about that. (v1 answer {i})",
            f"I have checked order details and fixed it; here is what happens next ({i}).\n- step one\n- step two",
            a_on_left=i % 2 == 0,
        )
        for i, p in enumerate(PROMPTS)
    ]
    registry.reviews().create("support-v2", spec, items)
    port = free_port()
    cmd = [platform_cmd(), "review", "serve", "--port", str(port), "--registry", str(tmp_path / "registry")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 60, path="/review/")
        yield url, registry
    finally:
        stop_process(proc)


def _start(driver: Any, url: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/review/support-v2/")
    box = driver.find_element(By.ID, "reviewer")
    box.clear()
    box.send_keys(name + "\n")
    wait_until(lambda: "/item/" in driver.current_url, 10)


def _item(driver: Any) -> int:
    return int(driver.current_url.split("/item/")[1].split("?")[0])


def _saves(driver: Any) -> int:
    from selenium.webdriver.common.by import By

    return int(driver.find_element(By.ID, "saved").get_attribute("data-saved") or 0)


def _keys(driver: Any, keys: str) -> None:
    """Type `keys` one at a time, each saved before the next (what a reviewer's pace allows)."""
    from selenium.webdriver.common.by import By

    body = driver.find_element(By.TAG_NAME, "body")
    for k in keys:
        before = _saves(driver)
        body.send_keys(k)
        wait_until(lambda b=before: _saves(driver) > b, 10)


def _finish(driver: Any) -> int:
    from selenium.webdriver.common.keys import Keys

    index = _item(driver)
    driver.find_element("tag name", "body").send_keys(Keys.ENTER)
    wait_until(lambda: "/item/" not in driver.current_url or _item(driver) != index, 10)
    return index


def _rate(driver: Any, plan: list[tuple[str, str, str]]) -> int:
    """Rate the item on screen as `plan[its number]` says; return its number."""
    left, right, pref = plan[_item(driver)]
    _keys(driver, left + right + pref)
    return _finish(driver)


def test_two_reviewers_rate_with_the_keyboard_and_resume(review_server: tuple[str, Registry]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, registry = review_server
    ann, bob = _browser(), _browser()
    try:
        _start(ann, url, "ann")
        _start(bob, url, "bob")
        # ann: first item with the wrong preference, then back from the second to change it
        assert _item(ann) == 0
        _keys(ann, ANN[0][0] + ANN[0][1] + "a")
        _finish(ann)
        assert _item(ann) == 1
        ann.find_element(By.TAG_NAME, "body").send_keys(Keys.BACKSPACE)
        wait_until(lambda: _item(ann) == 0, 10)
        assert ann.find_element(By.CSS_SELECTOR, "[data-pref=left]").get_attribute("class") == "on"
        _keys(ann, ANN[0][2])
        _finish(ann)
        assert _item(ann) == 1
        _rate(ann, ANN)
        assert _item(ann) == 2  # its prompt is shown as text, never run as markup
        shown = ann.find_element(By.CSS_SELECTOR, "pre[data-role=user]").text
        assert shown == PROMPTS[2] and not ann.find_elements(By.CSS_SELECTOR, "pre script")
        _rate(ann, ANN)
        RESULTS.mkdir(parents=True, exist_ok=True)
        _keys(ann, ANN[3][0] + "33")  # half-rated item on the screenshot
        ann.save_screenshot(str(RESULTS / "review_page.png"))
        _keys(ann, "3" + ANN[3][2])
        _finish(ann)
        _rate(ann, ANN)
        assert "Nothing left for you" in ann.page_source

        # bob: two items, half of the third, then the browser is gone
        for _ in range(2):
            _rate(bob, BOB)
        third = _item(bob)
        _keys(bob, BOB[third][0])
        bob.quit()
        bob = _browser()
        _start(bob, url, "bob")  # the same name: back on the unfinished item, its scores kept
        assert _item(bob) == third
        on = bob.find_elements(By.CSS_SELECTOR, ".crit button.on")
        assert [b.text for b in on] == list(BOB[third][0])
        _keys(bob, BOB[third][1] + BOB[third][2])
        _finish(bob)
        while "/item/" in bob.current_url:
            _rate(bob, BOB)
        ann.get(f"{url}/review/support-v2/report")
        ann.set_window_size(1280, 1400)
        wait_until(lambda: ann.execute_script("return document.images[0].complete"), 10)
        ann.save_screenshot(str(RESULTS / "review_report.png"))
        page_rate = ann.find_element(By.ID, "win-rate").text
    finally:
        ann.quit()
        bob.quit()

    expected = _expected(registry)
    result = CliRunner().invoke(
        cli, ["review", "report", "support-v2", "--json", "--registry", str(registry.root)]
    )
    report = json.loads(result.output)
    assert report["ratings"] == 10 and report["reviewers"] == ["ann", "bob"]
    assert report["win_rate"]["mean"] == pytest.approx(expected["win_rate"])
    assert report["win_rate"]["low"] <= expected["win_rate"] <= report["win_rate"]["high"]
    assert report["alpha"] == pytest.approx(expected["alpha"])
    assert page_rate == f"{100 * expected['win_rate']:.1f}%"
    stored = {(r.item, r.reviewer): r for r in registry.reviews().ratings("support-v2")}
    assert stored[(0, "ann")].scores["correctness"] == {"a": 4, "b": 5}  # item 0: A on the left


def _expected(registry: Registry) -> dict[str, float]:
    """The win rate of B and Krippendorff's alpha computed from the typed plans (not the server)."""
    import krippendorff

    value = {"a": 0.0, "t": 0.5, "b": 1.0}
    rows = []
    for plan in (ANN, BOB):
        row = []
        for i, (_, _, key) in enumerate(plan):
            a_on_left = i % 2 == 0
            v = value[key] if key == "t" or a_on_left else 1.0 - value[key]  # screen side -> version
            row.append(v)
        rows.append(row)
    win = sum(map(sum, rows)) / 10
    alpha = krippendorff.alpha(reliability_data=rows, level_of_measurement="ordinal")
    return {"win_rate": win, "alpha": float(alpha)}
