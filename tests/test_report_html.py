"""index.html in a real headless Chromium: it loads with no console error, its plots decode, it asks
for nothing over the network, and its screenshot is not blank.

Skips without chromium + chromedriver + selenium, unless PEFT_BENCH_REQUIRE_CHROMIUM=1 (CI), where it fails.
"""

import io
import os
import re
import shutil

import pytest

from bench.report import write_report
from tests.handmade import fewshot_records, survey_records, write_store

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1600"]


def _browser_paths():
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    return browser, shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    required = os.environ.get("PEFT_BENCH_REQUIRE_CHROMIUM") == "1"
    binary, driver_path = _browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        binary = None
    if not (binary and driver_path):
        if required:
            pytest.fail("PEFT_BENCH_REQUIRE_CHROMIUM=1 but chromium, chromedriver or selenium is missing "
                        "(apt-get install chromium chromium-driver; pip install -e '.[dev]')")
        pytest.skip("needs chromium, chromedriver and selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot_stats(driver) -> tuple[int, float]:
    """(distinct colours, fraction of pixels that are not white) of the visible page."""
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    pixels = np.asarray(image).reshape(-1, 3)
    return len(np.unique(pixels, axis=0)), float((pixels != 255).any(axis=1).mean())


def test_checks_can_fail(browser, tmp_path):
    """The harness sees a console error and a blank page, so the real test below can fail."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head>"
                   "<body><script>console.error('broken')</script></body></html>")
    browser.get(bad.as_uri())
    assert any("broken" in m for m in console_errors(browser))
    colours, inked = screenshot_stats(browser)
    assert colours <= 2 and inked < 0.001


def test_index_html_in_chromium(browser, tmp_path):
    write_store(tmp_path / "results", survey_records() + fewshot_records())
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["html"])
    page = tmp_path / "reports" / "hand" / "index.html"
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html), "the page must not reach the network"
    assert "<script" not in html

    browser.get(page.as_uri())
    assert console_errors(browser) == []
    assert browser.title == "peft-bench: hand"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    assert len(images) == 6  # params, peak memory, memory ×2 models, heatmap, few-shot
    assert all(done and width > 100 for done, width, _ in images), images
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    tables = browser.execute_script("return document.querySelectorAll('table').length")
    assert tables == 7  # survey ×2, memory ×2, few-shot scores and cost, environment
    text = browser.find_element("tag name", "body").text
    for expected in ("82.0 ± 2.0 (n=3)", "failed ×3", "unsupported", "Suite definition", "Environment",
                     "abc1234", "2.13.0+cpu"):
        assert expected in text
    tip = browser.execute_script("return document.querySelector('td[title*=\"loss is nan\"]').title")
    assert "lora on t2: RuntimeError: loss is nan" in tip
    colours, inked = screenshot_stats(browser)
    assert colours > 50 and inked > 0.03
