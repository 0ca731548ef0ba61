"""The console in a real headless Chromium against a real stack: sign in, upload, start a
run and watch it finish live, see the charts, try recommendations (with pictures, and a
cold start), sign out; start a search and watch its trials and best-so-far chart live, pin a
version and set a schedule, find similar items. Every wait is for a condition
(WebDriverWait), never a fixed sleep.

With ``RECSYS_CONSOLE_SCREENSHOTS=<dir>`` it also saves a screenshot of each page there
(how ``docs/console/*.png`` are made).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium.common.exceptions import StaleElementReferenceException

from tests.helpers.stack import Stack
from tests.helpers.training import wait_until_ended

pytestmark = pytest.mark.integration

SHOTS = os.environ.get("RECSYS_CONSOLE_SCREENSHOTS")
#: A live part swapped by htmx between finding it and reading it: read it again.
STALE = (StaleElementReferenceException,)
CATEGORIES = ("garden", "kitchen", "books", "toys")

#: Contrast ratio of each visible text element against its effective background, worst first.
CONTRAST_JS = """
function lum(c) {
  var m = c.match(/[\\d.]+/g).map(Number);
  var v = m.slice(0, 3).map(function (x) { x /= 255;
    return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
  return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; }
function bg(el) { while (el) { var c = getComputedStyle(el).backgroundColor;
  var m = c.match(/[\\d.]+/g); if (m && (m.length < 4 || Number(m[3]) > 0.5)) return c;
  el = el.parentElement; } return "rgb(255, 255, 255)"; }
var out = [], sel = "p, td, th, label, a, button, li, h1, h2, h3, span";
document.querySelectorAll(sel).forEach(function (el) {
  if (!el.offsetParent || !el.textContent.trim()) return;
  var a = lum(getComputedStyle(el).color), b = lum(bg(el));
  out.push([(Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05),
            el.tagName + ": " + el.textContent.trim().slice(0, 40)]);
});
out.sort(function (x, y) { return x[0] - y[0]; });
return out.slice(0, 3);
"""

#: Form controls (not hidden) without a label, by id or name.
UNLABELLED_JS = """
var bad = [];
document.querySelectorAll("input, select, textarea").forEach(function (el) {
  if (el.type === "hidden") return;
  var labelled = el.getAttribute("aria-label")
    || (el.id && document.querySelector('label[for="' + el.id + '"]'));
  if (!labelled) bad.push(el.id || el.name);
});
return bad;
"""


def _write_shop(folder: Path, picture: str) -> tuple[Path, Path]:
    """A small shop: 40 items in 4 categories with pictures, 120 users who stay in one."""
    rng = random.Random(7)
    items = folder / "items.csv"
    with items.open("w") as out:
        out.write("id,type,name,metadata,media_url\n")
        for n in range(40):
            meta = json.dumps({"category": CATEGORIES[n % 4]}).replace('"', '""')
            out.write(f'i{n:03d},item,{CATEGORIES[n % 4].title()} thing {n},"{meta}",{picture}\n')
    events = folder / "events.csv"
    with events.open("w") as out:
        out.write("type,source_id,target_id,timestamp,metadata\n")
        for user in range(120):
            mine = [n for n in range(40) if n % 4 == user % 4]
            for n in rng.sample(mine, 4):
                day = 1 + rng.randrange(9)
                out.write(f"view,u{user:03d},i{n:03d},2026-03-{day:02d}T10:00:00Z,\n")
    return items, events


def _shot(driver: Any, name: str, scroll_to: str | None = None, height: int = 1000) -> None:
    if SHOTS:
        driver.set_window_size(1280, height)
        if scroll_to:
            driver.execute_script("document.getElementById(arguments[0]).scrollIntoView();",
                                  scroll_to)
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))
        driver.set_window_size(1280, 1000)


def _ensure_shop(stack: Stack, folder: Path, picture: str) -> None:
    """Model ``shop`` serving, trained on the shop data (tag ``shop``). The first test makes
    it through the browser; run alone, this makes it through the API."""
    http = requests.Session()
    found = http.get(stack.url("/models/shop"), headers=stack.headers(), timeout=10)
    if found.status_code == 200 and found.json().get("serving_version"):
        return
    items, events = _write_shop(folder, picture)
    with items.open("rb") as one, events.open("rb") as two:
        stored = http.post(stack.url("/data_batch"), headers=stack.headers(), timeout=60,
                           files=[("files", one), ("files", two)], data={"tags": "shop"})
    assert stored.status_code == 201, stored.text
    started = http.post(stack.url("/train"), headers=stack.headers(), timeout=30, json={
        "model_id": "shop", "data_tags": ["shop"],
        "hyperparameters": {"epochs": 10, "loss": "warp"}})
    assert started.status_code == 202, started.text
    body, _ = wait_until_ended(stack, http, "shop", timeout=240)
    assert body["status"] == "completed", body


def _check_accessibility(driver: Any) -> None:
    assert driver.execute_script(UNLABELLED_JS) == [], "controls without labels"
    worst = driver.execute_script(CONTRAST_JS)
    assert not worst or worst[0][0] >= 4.5, f"low contrast: {worst}"


def test_sign_in_upload_train_watch_try_and_sign_out(
        console_stack: Stack, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, 60)
    base = console_stack.api_url
    picture = f"{base}/docs-assets/swagger-ui/favicon-32x32.png"
    items, events = _write_shop(tmp_path, picture)

    # Sign in, with the keyboard only.
    driver.get(f"{base}/console")
    wait.until(ec.presence_of_element_located((By.ID, "api_key")))
    _shot(driver, "signin")
    _check_accessibility(driver)
    driver.find_element(By.ID, "api_key").send_keys(console_stack.api_key, Keys.ENTER)
    wait.until(ec.url_contains("/console/overview"))
    assert driver.find_element(By.ID, "total-batches").text == "0"
    # The first Tab from the page reaches the skip link.
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("class") == "skip"

    # Upload two CSV files with a tag.
    driver.find_element(By.ID, "files").send_keys(f"{items}\n{events}")
    driver.find_element(By.ID, "tags").send_keys("shop")
    driver.find_element(By.ID, "upload").click()
    stored = wait.until(ec.visibility_of_element_located((By.ID, "uploaded")))
    assert "Stored 2 batches" in stored.text
    driver.get(f"{base}/console/overview")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#chart-per-day canvas")))
    assert driver.find_element(By.ID, "total-interactions").text == "480"
    assert "shop" in driver.find_element(By.ID, "groups").text
    _check_accessibility(driver)
    _shot(driver, "overview")

    # Start a run and watch it finish on the page, without reloading it.
    driver.find_element(By.LINK_TEXT, "Runs and models").click()
    wait.until(ec.presence_of_element_located((By.ID, "model_id")))
    driver.find_element(By.ID, "model_id").send_keys("shop")
    driver.find_element(By.ID, "data_tags").send_keys("shop")
    driver.find_element(By.ID, "epochs").send_keys("10")
    Select(driver.find_element(By.ID, "loss")).select_by_value("warp")
    _check_accessibility(driver)
    driver.find_element(By.ID, "train").click()
    wait.until(ec.url_contains("/console/runs/shop"))
    driver.execute_script("window.notReloaded = true;")
    card = '[data-model="shop"]'
    WebDriverWait(driver, 240, ignored_exceptions=STALE).until(lambda d: d.find_element(
        By.CSS_SELECTOR, card).get_attribute("data-status") in ("completed", "error"))
    assert driver.execute_script("return window.notReloaded === true;"), "the page reloaded"
    card_el = driver.find_element(By.CSS_SELECTOR, card)
    assert card_el.get_attribute("data-status") == "completed", card_el.text
    assert card_el.get_attribute("data-phase") == "done"
    assert "100%" in card_el.text
    metrics = driver.find_element(By.CSS_SELECTOR, "table.metrics").text
    assert "Most-popular baseline" in metrics and "precision at k" in metrics
    curve = driver.find_elements(By.CSS_SELECTOR, "#chart-curve canvas")
    assert curve or driver.find_element(By.ID, "no-curve").text == "No curve yet."
    assert "v1" in driver.find_element(By.ID, "versions").text
    _check_accessibility(driver)
    _shot(driver, "model")
    driver.get(f"{base}/console/runs")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, card)))
    _shot(driver, "runs")

    # Try it: a known user gets items of their category, with names and pictures.
    driver.get(f"{base}/console/try")
    Select(wait.until(ec.presence_of_element_located((By.ID, "model")))).select_by_value("shop")
    driver.find_element(By.ID, "source_id").send_keys("u001")
    driver.find_element(By.ID, "recommend").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#recs .rec")))
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#recs .rec .name")]
    assert len(names) == 10 and sum("Kitchen" in n for n in names[:3]) >= 2, names
    wait.until(lambda d: d.execute_script(
        "var i = document.querySelector('#recs img');"
        "return i && i.complete && i.naturalWidth > 0;"))
    _check_accessibility(driver)
    _shot(driver, "try")

    # Cold start: a new visitor known only by typed metadata.
    driver.find_element(By.ID, "source_id").clear()
    driver.find_element(By.ID, "source_id").send_keys("newcomer")
    driver.find_element(By.ID, "source_metadata").send_keys("category: books")
    driver.find_element(By.ID, "recommend").click()
    wait.until(lambda d: "newcomer" in d.find_element(By.ID, "results").text
               and d.find_elements(By.CSS_SELECTOR, "#recs .rec"))
    assert "fallback" in driver.find_element(By.ID, "recs").text

    # Sign out: back to the sign-in form, and the pages are closed again.
    driver.find_element(By.ID, "signout").click()
    wait.until(ec.presence_of_element_located((By.ID, "api_key")))
    driver.get(f"{base}/console/overview")
    wait.until(ec.url_contains("/console/signin"))


def _sign_in(driver: Any, wait: Any, stack: Stack) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(f"{stack.api_url}/console/signin")
    wait.until(ec.presence_of_element_located((By.ID, "api_key")))
    driver.find_element(By.ID, "api_key").send_keys(stack.api_key, Keys.ENTER)
    wait.until(ec.url_contains("/console/overview"))


def _submit_and_wait(driver: Any, wait: Any, button_id: str) -> None:
    """Click a plain form's button and wait until the page it leads to has loaded (the old
    page's mark gone), so no check reads the page being left."""
    from selenium.webdriver.common.by import By

    driver.execute_script("window.leaving = true;")
    driver.find_element(By.ID, button_id).click()
    wait.until(lambda d: d.execute_script(
        "return window.leaving !== true && document.readyState === 'complete';"))


def test_tune_live_pin_schedule_and_similar_items(
        console_stack: Stack, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, 60)
    base = console_stack.api_url
    _ensure_shop(console_stack, tmp_path, f"{base}/docs-assets/swagger-ui/favicon-32x32.png")
    _sign_in(driver, wait, console_stack)

    # Start a small search with the keyboard (Enter in the last field submits the form).
    driver.find_element(By.LINK_TEXT, "Tuning").click()
    wait.until(ec.presence_of_element_located((By.ID, "trials")))
    _check_accessibility(driver)
    driver.find_element(By.ID, "tune_model_id").send_keys("shop-tuned")
    driver.find_element(By.ID, "tune_data_tags").send_keys("shop")
    driver.find_element(By.ID, "trials").clear()
    driver.find_element(By.ID, "trials").send_keys("3")
    driver.find_element(By.ID, "tune_epochs").send_keys("5", Keys.ENTER)
    wait.until(ec.url_contains("/console/tuning/shop-tuned"))
    driver.execute_script("window.notReloaded = true;")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#trials tr.trial")) == 3

    # Trials finish on the page without a reload; the chart is drawn; polling stops at the end.
    WebDriverWait(driver, 240).until(lambda d: d.find_elements(
        By.CSS_SELECTOR, "#trials tr.trial[data-state=complete]"))
    WebDriverWait(driver, 240, ignored_exceptions=STALE).until(lambda d: d.find_element(
        By.ID, "search-live").get_attribute("data-status") in ("completed", "error"))
    assert driver.execute_script("return window.notReloaded === true;"), "the page reloaded"
    live = driver.find_element(By.ID, "search-live")
    assert live.get_attribute("data-status") == "completed", live.text
    assert live.get_attribute("hx-get") is None, "still polling after the end"
    states = [e.get_attribute("data-state")
              for e in driver.find_elements(By.CSS_SELECTOR, "#trials tr.trial")]
    assert states == ["complete"] * 3, live.text
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#chart-best canvas")))
    assert "Best: trial" in driver.find_element(By.ID, "best").text
    _check_accessibility(driver)
    _shot(driver, "tuning", height=1320)

    # Pin version 1 of shop, then set a nightly schedule, on the model page.
    driver.get(f"{base}/console/runs/shop")
    Select(wait.until(ec.presence_of_element_located((By.ID, "serve_version")))
           ).select_by_value("1")
    _submit_and_wait(driver, wait, "serve")
    assert "v1, pinned:" in driver.find_element(By.ID, "pin-state").text
    driver.find_element(By.ID, "cron").send_keys("0 3 * * *")
    driver.find_element(By.ID, "sched_tags").send_keys("shop")
    _submit_and_wait(driver, wait, "save-schedule")
    assert "0 3 * * *" in driver.find_element(By.ID, "schedule-when").text
    assert "T03:00:00" in driver.find_element(By.ID, "schedule-next").text
    _check_accessibility(driver)
    _shot(driver, "schedule", scroll_to="pinning")
    _submit_and_wait(driver, wait, "unpin")
    assert "v1, not pinned:" in driver.find_element(By.ID, "pin-state").text
    _submit_and_wait(driver, wait, "remove-schedule")
    assert driver.find_elements(By.ID, "no-schedule")

    # Similar items: items like a kitchen thing, with names and pictures.
    driver.get(f"{base}/console/try")
    Select(wait.until(ec.presence_of_element_located((By.ID, "similar_model")))
           ).select_by_value("shop")
    driver.find_element(By.ID, "target_id").send_keys("i001", Keys.ENTER)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#similar .rec")))
    rows = driver.find_elements(By.CSS_SELECTOR, "#similar .rec")
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#similar .rec .name")]
    assert len(rows) == 10 and "i001" not in [r.get_attribute("data-target") for r in rows]
    assert sum("Kitchen" in n for n in names[:5]) >= 3, names  # i001 is a kitchen thing
    wait.until(lambda d: d.execute_script(
        "var i = document.querySelector('#similar img');"
        "return i && i.complete && i.naturalWidth > 0;"))
    _check_accessibility(driver)
    _shot(driver, "similar", scroll_to="similar-items")


def test_docs_render_without_the_internet(console_stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, 60)
    driver.get(f"{console_stack.api_url}/docs")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .opblock")))
    driver.get(f"{console_stack.api_url}/redoc")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[role=menuitem], .menu-content")))
