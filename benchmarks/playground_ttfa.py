"""Time to first audio on the playground page, against the clip's total generation time, in headless Chromium.

Drives the page of a running server (``musicgen-onnx serve ...``) as a person would: types a prompt, sets the
duration and seed, clicks Generate, and reads the page's own record of the run (first audio = when the first
samples are scheduled to be heard; total = when the last byte arrived).

    musicgen-onnx serve /tmp/eng-int8 --port 8000 &
    python benchmarks/playground_ttfa.py --url http://127.0.0.1:8000 --duration 5 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--prompt", default="lo-fi hip hop beat with warm piano")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one generation")
    args = p.parse_args(argv)
    options = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"):
        options.add_argument(flag)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    driver = webdriver.Chrome(service=Service(executable_path=args.chromedriver), options=options)
    rows = []
    try:
        driver.get(f"{args.url}/")
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return window.playground.model !== null"))
        for i in range(args.runs):
            for field, value in (("prompt", args.prompt), ("duration", str(args.duration)), ("seed", str(i))):
                element = driver.find_element(By.ID, field)
                element.clear()
                element.send_keys(value)
            before = driver.execute_script("return window.playground.runs")
            driver.find_element(By.ID, "generate").click()
            WebDriverWait(driver, args.timeout).until(
                lambda d, before=before: d.execute_script(
                    "const r = window.playground.run; return r && r.id > arguments[0] && r.totalMs !== null", before
                )
            )
            run = driver.execute_script("return window.playground.run")
            row = {k: run.get(k) for k in ("firstAudioMs", "totalMs", "pauses", "error")}
            row["duration_s"] = args.duration
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        driver.quit()
    ok = [r for r in rows if not r["error"] and r["firstAudioMs"] is not None]
    for r in ok:
        print(
            f"first audio {r['firstAudioMs'] / 1000:.2f} s, whole clip {r['totalMs'] / 1000:.2f} s "
            f"for {r['duration_s']:g} s of audio ({r['pauses']} pause(s) to buffer)"
        )
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
