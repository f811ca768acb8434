"""The demo page at `/` in a real headless Chromium: upload a generated clip, ask, read the three answers."""

import re
import shutil

import httpx
import pytest

from media_factory import write_video
from serve_helpers import Server, data_uri

webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("fastapi")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")
MODES = ("coarse_only", "coarse_fine", "autoregressive")


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def _wait_state(browser, want, timeout=180):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(
        lambda d: d.find_element("id", "answers").get_attribute("data-state") in (want, "error"))
    return browser.find_element("id", "answers").get_attribute("data-state")


def test_upload_ask_and_read_three_answers(server, browser, tmp_path):
    clip = write_video(tmp_path / "square.mp4", seconds=3, fps=8, size=(96, 64))
    browser.get(server.url + "/")
    assert "fvlm" in browser.title
    browser.find_element("id", "file").send_keys(str(clip))
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: d.find_element("id", "ask").is_enabled())
    browser.find_element("id", "prompt").send_keys("Where does the square go?")
    browser.find_element("id", "max_tokens").clear()
    browser.find_element("id", "max_tokens").send_keys("6")
    browser.find_element("id", "ask").click()
    assert _wait_state(browser, "done") == "done", browser.find_element("id", "status").text
    shown = {}
    for m in MODES:
        card = browser.find_element("id", f"mode-{m}")
        shown[m] = card.find_element("css selector", ".text").text
        assert re.fullmatch(r"\d+\.\d{3} s", card.find_element("css selector", ".lat").text)
        assert re.fullmatch(r"\d+\.\d{2} / \d+\.\d{2}", card.find_element("css selector", ".ent").text)
    img = browser.find_element("id", "heatmap")
    assert img.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", img) > 300
    # the page shows exactly what the API computes for the same file and question (greedy: deterministic)
    api = httpx.post(server.url + "/v1/compare", timeout=180, json={
        "media": data_uri(clip, "video/mp4"), "name": "square.mp4", "prompt": "Where does the square go?",
        "max_tokens": 6}).json()
    assert api["frames"] == 3
    assert shown == {m: api["modes"][m]["text"] or "(empty answer)" for m in MODES}


def test_a_broken_upload_shows_the_error_and_the_page_recovers(server, browser, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"definitely not a video")
    browser.get(server.url + "/")
    browser.find_element("id", "file").send_keys(str(bad))
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: d.find_element("id", "ask").is_enabled())
    browser.find_element("id", "ask").click()
    assert _wait_state(browser, "done") == "error"
    status = browser.find_element("id", "status")
    assert "unreadable media" in status.text and "error" in status.get_attribute("class")
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
