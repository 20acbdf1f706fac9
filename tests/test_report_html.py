"""index.html: its Explore section's data (pure Python), then the page in a real headless Chromium: it
loads with no console error, its plots decode, it asks for nothing over the network, its screenshot is not
blank, and the explore table sorts and filters and the Pareto plot redraws as the reader asks.

The Chromium tests skip without chromium + chromedriver + selenium, unless PEFT_BENCH_REQUIRE_CHROMIUM=1
(CI), where they fail.
"""

import io
import json
import os
import re
import shutil

import pytest

from bench.cell.curves import CurveWriter
from bench.report import write_report
from bench.report.interactive import script_json
from bench.report.pareto import pareto_front
from tests.handmade import GIB, fewshot_records, params, record, survey_records, write_store

ODD = "odd </script><!-- <b>&"  # a method label that would end the data's <script> element if not escaped

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1600"]


def odd_record() -> dict:
    """A hybrid method on m1/t1 with a hostile label and no peak memory or train time (nulls to sort last)."""
    r = record(ODD, "hybrid", "m1", "t1", 1, 60, params=params(1000, 5, 20), memory={}, train_s=None)
    r["cell"]["id"] = "odd-m1-t1-1"  # the store names the file after the id
    return r


def render(tmp_path, records) -> str:
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["html"])
    return (tmp_path / "reports" / "hand" / "index.html").read_text()


def explore_data(html: str) -> dict:
    blob = re.search(r'<script type="application/json" id="explore-data">(.*?)</script>', html, re.S)
    return json.loads(blob.group(1))


def test_explore_rows_are_the_ok_aggregates(tmp_path):
    """One row per ok (model, task, method, shots) aggregate, means over ok seeds (tests/handmade.py)."""
    html = render(tmp_path, survey_records() + fewshot_records())
    data = explore_data(html)
    rows = {(r["model"], r["task"], r["method"]): r for r in data["rows"]}
    keys = ["score", "params.method", "params.trainable", "memory.peak_bytes", "time.train_s",
            "time.infer_latency_s", "seeds"]
    expected = {  # score, method params, trainable, peak, train time, latency, ok seeds
        ("m1", "t1", "full"): (82.0, 1000, 1000, 3 * GIB, 12.0, None, 3),
        ("m1", "t1", "prompt-tuning"): (50.0, 20, 20, GIB, 6.0, None, 1),
        ("m1", "t1", "bitfit"): (70.0, 10, 10, GIB, 4.0, None, 3),
        ("m1", "t1", "lora"): (86.0, 50, 50, GIB, 5.0, None, 3),
        ("m1", "t2", "full"): (62.0, 1000, 1000, 4 * GIB, 20.0, None, 3),
        ("m1", "t2", "lora"): (71.0, 50, 50, int(1.5 * GIB), 5.0, None, 2),  # the failed seed is not in it
        ("t0", "cb", "icl (16-shot)"): (50.0, 0, 0, 2 * GIB, 0.0, None, 1),
        ("t0", "cb", "ia3 (16-shot)"): (80.0, 30, 30, int(2.5 * GIB), 30.0, None, 1),
        ("t0", "rte", "icl (16-shot)"): (60.0, 0, 0, 2 * GIB, 0.0, None, 1),
        ("t0", "rte", "ia3 (16-shot)"): (70.0, 30, 30, int(2.5 * GIB), 30.0, None, 1),
    }
    assert set(rows) == set(expected)  # bitfit and prompt-tuning on t2 have no ok seed: no row
    for key, values in expected.items():
        assert [rows[key]["values"][k] for k in keys] == pytest.approx(list(values)), key
    assert rows[("m1", "t2", "lora")]["texts"]["score"] == "71.0 ± 1.4"
    assert rows[("m1", "t2", "lora")]["metric"] == "chrf" and rows[("m1", "t2", "lora")]["family"] == "reparameterized"
    assert rows[("m1", "t1", "full")]["texts"]["time.infer_latency_s"] == "–"
    assert "Not shown: 2 cell(s) without an ok seed" in html and "bitfit · m1 · t2 (failed ×3)" in html
    assert "prompt-tuning · m1 · t2 (unsupported)" in html
    # the static table (all a reader without JavaScript gets) has the same rows, dashes for nulls
    table = html[html.index('<table id="explore-table">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr data-row=") == 10
    # no latency, no time to training, no forgetting recorded: a dash, never 0
    assert table.count('<td class="num">–</td>') == 30
    assert '<td class="num">2 of 3 (failed)</td>' not in table and "2 of 3 (failed)" in table
    assert 'id="explore-controls" class="explore-controls needs-script" hidden' in html  # the script reveals it
    assert 'id="explore-plot" class="explore-plot needs-script" hidden' in html
    axes = {a["key"]: a for a in data["axes"]}
    assert axes["score"]["better"] == "higher" and axes["time.train_s"]["better"] == "lower"
    assert axes["memory.peak_bytes"]["label"] == "peak memory (GB, CPU RSS)"


def test_explore_without_ok_results(tmp_path):
    """No ok seed anywhere: the section says so, names the cells, and the page has no script."""
    failed = [r for r in survey_records() if r["status"] != "ok"]
    html = render(tmp_path, failed)
    assert "No cell has an ok seed yet" in html and "bitfit · m1 · t2 (failed ×3)" in html
    assert "<script" not in html


def test_explore_data_cannot_end_its_script(tmp_path):
    assert "<" not in script_json({"m": "</script><!--&>"}) and ">" not in script_json({"m": "</script><!--&>"})
    assert json.loads(script_json({"m": "</script><!--&>"})) == {"m": "</script><!--&>"}
    html = render(tmp_path, survey_records() + [odd_record()])
    # the only script ends are those of the page's two script elements
    assert len(re.findall(r"</script", html, re.I)) == len(re.findall(r"<script", html, re.I)) == 2
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="application/json" id="explore-data">',
                                                     "<script>"]
    assert ODD in {r["method"] for r in explore_data(html)["rows"]}
    assert "odd &lt;/script&gt;&lt;!-- &lt;b&gt;&amp;" in html


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
    assert not re.search(r"<script[^>]*\bsrc=", html), "scripts are inline"

    browser.get(page.as_uri())
    assert console_errors(browser) == []
    assert browser.title == "peft-bench: hand"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    assert len(images) == 6  # params, peak memory, memory ×2 models, heatmap, few-shot
    assert all(done and width > 100 for done, width, _ in images), images
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    tables = browser.execute_script("return document.querySelectorAll('table').length")
    assert tables == 8  # explore, survey ×2, memory ×2, few-shot scores and cost, environment
    text = browser.find_element("tag name", "body").text
    for expected in ("82.0 ± 2.0 (n=3)", "failed ×3", "unsupported", "Suite definition", "Environment",
                     "abc1234", "2.13.0+cpu"):
        assert expected in text
    tip = browser.execute_script("return document.querySelector('#methods-compared td[title*=\"loss is nan\"]').title")
    assert "lora on t2: RuntimeError: loss is nan" in tip
    colours, inked = screenshot_stats(browser)
    assert colours > 50 and inked > 0.03


def shown_rows(driver) -> list[int]:
    """The blob indices of the explore table's visible rows, top to bottom."""
    return driver.execute_script("return Array.from(document.querySelectorAll('#explore-table tbody tr'))"
                                 ".filter(tr => !tr.hidden).map(tr => Number(tr.dataset.row))")


def plotted(driver) -> dict[int, bool]:
    """Row index -> on the Pareto front, for every point of the explore plot."""
    points = driver.execute_script("return Array.from(document.querySelectorAll('#explore-plot g.point'))"
                                   ".map(g => [Number(g.dataset.row), g.classList.contains('on-front')])")
    return dict(points)


def expected_front(data: dict, rows: list[int], x: str, y: str, log_x: bool, log_y: bool) -> dict[int, bool]:
    """What the plot must draw: rows with both values (> 0 on a log axis), the front by pareto_front once
    each axis is turned so that lower x and higher y are better."""
    better = {a["key"]: a["better"] for a in data["axes"]}
    usable = [i for i in rows if all(v is not None and (not log or v > 0) for v, log in
                                     ((data["rows"][i]["values"][x], log_x), (data["rows"][i]["values"][y], log_y)))]
    points = [(data["rows"][i]["values"][x] * (1 if better[x] == "lower" else -1),
               data["rows"][i]["values"][y] * (1 if better[y] == "higher" else -1)) for i in usable]
    front = {usable[k] for k in pareto_front(points)}
    return {i: i in front for i in usable}


def test_explore_in_chromium(browser, tmp_path):
    """Sorting, filtering and the Pareto plot, checked against the blob and bench.report.pareto."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    html = render(tmp_path, survey_records() + fewshot_records() + [odd_record()])
    data = explore_data(html)
    browser.get((tmp_path / "reports" / "hand" / "index.html").as_uri())
    count = browser.find_element(By.ID, "explore-count")
    assert count.text == "11 of 11 rows shown"
    assert ODD in browser.find_element(By.ID, "explore-table").text  # the label reads as written

    # sort by peak memory: ascending, then descending; the odd row (no peak) last both times
    header = browser.find_element(By.CSS_SELECTOR, 'th[data-key="memory.peak_bytes"]')
    odd = next(i for i, r in enumerate(data["rows"]) if r["method"] == ODD)
    for direction, arrow in (("ascending", "▲"), ("descending", "▼")):
        header.find_element(By.TAG_NAME, "button").click()
        order = shown_rows(browser)
        peaks = [data["rows"][i]["values"]["memory.peak_bytes"] for i in order[:-1]]
        assert order[-1] == odd and None not in peaks
        assert peaks == sorted(peaks, reverse=direction == "descending")
        assert header.get_attribute("aria-sort") == direction and arrow in header.text

    # filter by family: only its rows, the count follows, and so does the plot
    family = Select(browser.find_element(By.ID, "explore-filter-family"))
    family.select_by_value("reparameterized")
    lora = [i for i, r in enumerate(data["rows"]) if r["family"] == "reparameterized"]
    assert sorted(shown_rows(browser)) == lora and len(lora) == 2
    assert count.text == "2 of 11 rows shown"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#explore-table tbody tr[hidden]")) == 9
    assert sorted(plotted(browser)) == lora
    family.select_by_value("")

    # axes: the plot draws every usable row shown, and the front pareto_front finds
    Select(browser.find_element(By.ID, "explore-filter-model")).select_by_value("m1")
    m1 = sorted(shown_rows(browser))
    assert len(m1) == 7
    x_axis, y_axis = (Select(browser.find_element(By.ID, f"explore-axis-{a}")) for a in "xy")
    for x, y in (("params.trainable", "score"), ("memory.peak_bytes", "time.train_s"), ("score", "params.method")):
        x_axis.select_by_value(x)
        y_axis.select_by_value(y)
        log_x, log_y = (browser.find_element(By.ID, f"explore-log-{a}").is_selected() for a in "xy")
        assert (log_x, log_y) == ("params" in x, "params" in y)  # counts start on a log scale
        expected = expected_front(data, m1, x, y, log_x, log_y)
        assert plotted(browser) == expected, (x, y)
        assert 1 <= sum(expected.values()) < len(expected)
        assert browser.find_element(By.CSS_SELECTOR, "#explore-plot path.front-line").get_attribute("d")
    assert len(expected_front(data, m1, "memory.peak_bytes", "time.train_s", False, False)) == 6  # odd: no peak
    tip = browser.find_element(By.CSS_SELECTOR, f'#explore-plot g.point[data-row="{odd}"] title')
    assert tip.get_attribute("textContent") == (f"{ODD} · m1 · t1\nscore (main metric, 0-100): 60.0\n"
                                                "method params: 5\non the Pareto front")

    # the log switch: zero-parameter rows (in-context learning) appear on a linear axis only
    Select(browser.find_element(By.ID, "explore-filter-model")).select_by_value("t0")
    x_axis.select_by_value("params.trainable")
    y_axis.select_by_value("score")
    assert len(plotted(browser)) == 2
    browser.find_element(By.ID, "explore-log-x").click()
    assert plotted(browser) == expected_front(data, sorted(shown_rows(browser)), "params.trainable", "score",
                                              False, False)
    assert len(plotted(browser)) == 4

    assert console_errors(browser) == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


def write_curves(results, ids: list[str], steps: int = 40) -> None:
    """A curve per cell through the cells' own writer: loss 2·0.9^step (+ the cell's index), lr decaying
    linearly, a gradient norm only for the first cell, evaluations every 10 steps."""
    for n, cell_id in enumerate(ids):
        curve = CurveWriter(results / "hand" / "curves" / f"{cell_id}.jsonl", steps, cell_id, "selection")
        for step in range(1, steps + 1):
            norm = 0.5 + step / 100 if n == 0 else None
            curve.steps(step, [2 * 0.9 ** step + n], [1e-3 * (1 - step / steps)], [norm], [64], 0.01)
            if step % 10 == 0:
                curve.evaluation(step, 50 + step / 2 + n)
        curve.close()


def drawn_points(driver, series: str) -> list[tuple[float, float]]:
    """The (x, y) pixels of the curve line of one picker panel, each checked to lie inside the panel's frame."""
    panel = f'#explore-curves svg[data-series="{series}"]'
    d, frame = driver.execute_script(
        "const p = document.querySelector(arguments[0] + ' path.curve-line'), "
        "f = document.querySelector(arguments[0] + ' rect.frame'); "
        "return [p ? p.getAttribute('d') : null, ['x', 'y', 'width', 'height'].map(a => Number(f.getAttribute(a)))]",
        panel)
    pixels = [] if d is None else [tuple(map(float, xy.split(","))) for xy in re.findall(r"[-\d.]+,[-\d.]+", d)]
    x, y, width, height = frame
    assert all(x <= px <= x + width and y <= py <= y + height for px, py in pixels), (series, frame, pixels)
    return pixels


def assert_affine(pixels, xs, ys) -> None:
    """Each pixel is the same increasing map of its step and the same decreasing map of its value (SVG's y grows
    down), fixed by the first and last points: the line draws these values at these steps, in order."""
    assert len(pixels) == len(xs) == len(ys) >= 2
    (px0, py0), (px1, py1) = pixels[0], pixels[-1]
    for (px, py), x, y in zip(pixels, xs, ys):
        assert px == pytest.approx(px0 + (x - xs[0]) * (px1 - px0) / (xs[-1] - xs[0]), abs=0.02)
        if ys[-1] != ys[0]:
            assert py == pytest.approx(py0 + (y - ys[0]) * (py1 - py0) / (ys[-1] - ys[0]), abs=0.02)
    assert px1 > px0 and (ys[-1] == ys[0] or (py1 - py0) * (ys[-1] - ys[0]) < 0)


def test_curve_picker_in_chromium(browser, tmp_path):
    """Picking a cell draws its loss, lr and evaluation curves from the blob; the picker follows the filters."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    ids = ["lora-m1-t1-1", "lora-m1-t1-2", "full-m1-t1-1", "lora-m1-t2-1"]
    write_store(tmp_path / "results", survey_records())
    write_curves(tmp_path / "results", ids)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["html"])
    data = explore_data((tmp_path / "reports" / "hand" / "index.html").read_text())
    assert sorted(c["id"] for c in data["cells"]) == sorted(ids)
    browser.get((tmp_path / "reports" / "hand" / "index.html").as_uri())
    pick = Select(browser.find_element(By.ID, "explore-curve-pick"))
    assert sorted(data["cells"][int(o.get_attribute("value"))]["id"] for o in pick.options) == sorted(ids)

    first = next(k for k, c in enumerate(data["cells"]) if c["id"] == "lora-m1-t1-1")
    pick.select_by_value(str(first))
    curve = data["cells"][first]["curve"]
    assert curve["step"] == list(range(1, 41)) and curve["stored"] == 40  # 40 steps: one point each
    for series in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert_affine(drawn_points(browser, series), curve["step"], curve[series])
    assert curve["loss"][-1] == pytest.approx(2 * 0.9 ** 40, rel=1e-3)
    assert_affine(drawn_points(browser, "eval"), curve["eval_step"], curve["eval"])
    assert curve["eval"] == [55.0, 60.0, 65.0, 70.0]
    title = browser.find_element(By.CSS_SELECTOR, '#explore-curves svg[data-series="eval"]').get_attribute("aria-label")
    assert title == "main metric during training (selection split)"

    other = next(k for k, c in enumerate(data["cells"]) if c["id"] == "lora-m1-t1-2")
    pick.select_by_value(str(other))  # the second cell: its loss is the first's + 1, and it has no gradient norm
    second = data["cells"][other]["curve"]
    assert second["loss"] == pytest.approx([v + 1 for v in curve["loss"]], abs=2e-3)  # both to 4 digits
    assert_affine(drawn_points(browser, "loss"), second["step"], second["loss"])
    assert drawn_points(browser, "grad_norm") == []
    assert "not recorded" in browser.find_element(By.CSS_SELECTOR, '#explore-curves svg[data-series="grad_norm"]').text
    assert "lora-m1-t1-2: 40 training points from the 40" in browser.find_element(By.ID, "explore-curve-note").text

    # the filters narrow the picker to the cells of the rows shown; its choice stays while listed
    Select(browser.find_element(By.ID, "explore-filter-task")).select_by_value("t1")
    assert sorted(data["cells"][int(o.get_attribute("value"))]["id"] for o in pick.options) == sorted(ids[:3])
    assert pick.first_selected_option.get_attribute("value") == str(other)
    Select(browser.find_element(By.ID, "explore-filter-method")).select_by_value("full")
    assert [data["cells"][int(o.get_attribute("value"))]["id"] for o in pick.options] == ["full-m1-t1-1"]
    assert len(drawn_points(browser, "loss")) == 40
    assert console_errors(browser) == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


def test_explore_shows_forgetting_as_the_mean_over_ok_seeds(tmp_path):
    """forgetting.delta (train.forgetting) is an explore column and axis: the mean of the ok seeds' deltas."""
    records = [r for r in survey_records() if r["cell"]["label"] == "lora" and r["cell"]["task"] == "t1"]
    for r, delta in zip(records, (0.25, 0.5, 0.75)):
        r["forgetting"] = {"lm_loss_before": 3.0, "lm_loss_after": 3.0 + delta, "delta": delta}
    data = explore_data(render(tmp_path, records))
    (row,) = data["rows"]
    assert row["values"]["forgetting.delta"] == pytest.approx(0.5)
    assert "forgetting (Δ loss, nats)" in json.dumps(data, ensure_ascii=False)
