"""Screenshot of the `fvlm serve` demo page (docs/demo.png): serve a model, upload a clip in headless Chromium,
ask, wait for the three answers, save the page.

    python scripts/demo_screenshot.py --model runs/speedrun/dpo --video runs/speedrun/sample7.mp4 --out docs/demo.png

Needs the serve extra, selenium, and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from serve_helpers import Server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--video", required=True)
    ap.add_argument("--prompt", default="Describe this video.")
    ap.add_argument("--max-tokens", default="24")
    ap.add_argument("--out", default="docs/demo.png")
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    server = Server(model=args.model)
    opts = Options()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1240,1180"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(server.url + "/")
        driver.find_element("id", "file").send_keys(str(Path(args.video).resolve()))
        WebDriverWait(driver, 30).until(lambda d: d.find_element("id", "ask").is_enabled())
        driver.find_element("id", "prompt").send_keys(args.prompt)
        box = driver.find_element("id", "max_tokens")
        box.clear()
        box.send_keys(args.max_tokens)
        driver.find_element("id", "ask").click()
        WebDriverWait(driver, 300).until(
            lambda d: d.find_element("id", "answers").get_attribute("data-state") in ("done", "error"))
        time.sleep(1.0)  # the heatmap image and the latency bars settle
        for _ in range(2):  # the window grows to the page; the layout settles once more at the new size
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1240, height + 140)  # + the browser's own chrome, even headless
            time.sleep(0.5)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.stop()


if __name__ == "__main__":
    main()
