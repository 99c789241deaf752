"""The playground page (``GET /``) in a real browser: headless Chromium driven by Selenium, against the tiny
stereo export served on 127.0.0.1 (the session's Ray cluster, shared with tests/test_serving.py).

Debian's ``chromium`` and ``chromium-driver`` are used as installed (``.ci/run`` installs them); Selenium
Manager is kept offline, so nothing is downloaded. Waits are bounded; timings are printed, never asserted.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serving_fixtures import poll

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: Where the screenshot of a finished generation goes: the README's docs/playground.png is refreshed with
#: ``MUSICGEN_ONNX_SCREENSHOT=docs/playground.png``; a plain test run leaves the tracked tree alone.
SCREENSHOT_ENV = "MUSICGEN_ONNX_SCREENSHOT"
SR = 32000
WAIT_S = 120  # for any one thing the page does


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"{missing} not installed: apt-get install -y chromium chromium-driver (.ci/run does this)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=820,800",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers or browsers online
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


def _open(driver: webdriver.Chrome, base: str) -> None:
    driver.get(f"{base}/")
    WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script("return window.playground.model !== null"))
    driver.get_log("browser")  # start each test with an empty console


def _fill(driver: webdriver.Chrome, **values: str) -> None:
    for field, value in values.items():
        if field == "format":
            driver.execute_script("document.getElementById('format').value = arguments[0]", value)
            continue
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)


def _generate(driver: webdriver.Chrome) -> dict:
    """Click Generate and wait until the request is over; the page's record of the run."""
    runs = driver.execute_script("return window.playground.runs")
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("const r = window.playground.run; return r && r.id > arguments[0]", runs)
    )
    WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script("return window.playground.run.totalMs !== null"))
    return driver.execute_script("return window.playground.run")


def _fetch(driver: webdriver.Chrome, url: str) -> bytes:
    """The bytes behind a URL of the page (a blob: download link), read in the page."""
    text = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then((r) => r.arrayBuffer()).then((buffer) => {
          const bytes = new Uint8Array(buffer);
          let s = "";
          for (let i = 0; i < bytes.length; i += 0x8000) {
            s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
          }
          done(btoa(s));
        }).catch((e) => done("error: " + e));
        """,
        url,
    )
    assert not text.startswith("error:"), text
    return base64.b64decode(text)


def _console_errors(driver: webdriver.Chrome) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_page_loads_with_the_model_and_no_console_errors(browser, stereo_app):
    _open(browser, stereo_app)
    model = requests.get(f"{stereo_app}/v1/models", timeout=WAIT_S).json()["data"][0]
    shown = browser.find_element(By.ID, "model").text
    for value in (model["id"], model["precision"], model["device"]):
        assert value in shown, (value, shown)
    assert browser.find_element(By.ID, "duration").get_attribute("max") == f"{model['max_duration']:g}"
    browser.refresh()  # a fresh load, with the console kept this time
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return window.playground.model !== null"))
    assert _console_errors(browser) == []


def test_a_generation_plays_while_it_is_generated(browser, stereo_app, tmp_path):
    _open(browser, stereo_app)
    _fill(browser, prompt="lo-fi beat with warm piano", duration="3", seed="5", format="wav")
    player = browser.find_element(By.ID, "player")
    browser.find_element(By.ID, "generate").click()
    # live: the <audio> element plays the stream (a MediaStream source) and its clock advances
    WebDriverWait(browser, WAIT_S, poll_frequency=0.05).until(
        lambda d: d.execute_script("return arguments[0].srcObject !== null && arguments[0].currentTime > 0.2", player)
    )
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return window.playground.run.download !== null"))
    run = browser.execute_script("return window.playground.run")
    assert run["samples"] == run["planned"] == 3 * SR and run["seed"] == 5 and not run.get("error")
    print(
        f"page: time to first audio {run['firstAudioMs']:.0f} ms, "
        f"<audio> 'playing' after {run['playingMs'] or -1:.0f} ms, "
        f"generation {run['totalMs']:.0f} ms for 3 s (tiny model, real-time factor {run['totalMs'] / 3000:.2f})"
    )
    # whole: the element gets the WAV once the live playback has been heard; it has the requested duration
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return window.playground.run.file !== null"))
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return isFinite(arguments[0].duration)", player))
    assert browser.execute_script("return arguments[0].duration", player) == pytest.approx(3.0, abs=1e-3)
    browser.execute_script("arguments[0].play()", player)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return arguments[0].currentTime > 0.3", player))
    # the download is the server's WAV for the same request, byte for byte
    wav = _fetch(browser, run["download"])
    audio, sr = sf.read(io.BytesIO(wav), dtype="int16")
    assert sr == SR and audio.shape == (3 * SR, 2)
    body = {"input": "lo-fi beat with warm piano", "duration": 3, "seed": 5}
    assert wav == requests.post(f"{stereo_app}/v1/audio/generations", json=body, timeout=WAIT_S).content
    assert browser.find_element(By.ID, "download").get_attribute("download") == "musicgen-5.wav"
    stats = browser.find_element(By.ID, "stats").text
    assert "Time to first audio" in stats and "Real-time factor" in stats and "s of audio" in stats
    assert _console_errors(browser) == []
    browser.execute_script("arguments[0].pause()", player)
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "playground.png")
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stream_slower_than_real_time_pauses_to_buffer_then_plays_through(browser, stereo_app):
    """Chromium's network throttling at half the clip's byte rate (32 kHz stereo int16: 128 kB/s), as a model
    slower than real time would deliver it: the first piece plays at once; the audio cannot arrive faster than
    half real time, so playback must pause to buffer; every sample is still played, then the whole file."""
    _open(browser, stereo_app)
    _fill(browser, prompt="slow network", duration="4", seed="6", format="wav")
    browser.set_network_conditions(offline=False, latency=0, download_throughput=64_000, upload_throughput=1_000_000)
    try:
        run = _generate(browser)
    finally:
        browser.delete_network_conditions()
    assert not run.get("error") and run["samples"] == run["planned"] == 4 * SR
    assert run["firstAudioMs"] is not None and run["pauses"] >= 1
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return window.playground.run.file !== null"))
    heard = browser.execute_script("return window.playground.run.heardMs")
    print(
        f"half real time: first audio {run['firstAudioMs']:.0f} ms, stream {run['totalMs']:.0f} ms for 4 s, "
        f"{run['pauses']} pause(s) to buffer, live playback over at {heard:.0f} ms"
    )


@pytest.mark.parametrize(("fmt", "rate", "frame"), [("mp3", SR, 1152), ("opus", 48000, 960)])
def test_the_download_comes_in_the_picked_format(browser, stereo_app, fmt, rate, frame):
    _open(browser, stereo_app)
    _fill(browser, prompt="", duration="2", seed="", format=fmt)
    _generate(browser)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return window.playground.run.download !== null"))
    run = browser.execute_script("return window.playground.run")
    data = _fetch(browser, run["download"])
    audio, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sr == rate and abs(audio.shape[0] - 2 * rate) <= frame, audio.shape
    name = browser.find_element(By.ID, "download").get_attribute("download")
    assert name == f"musicgen-{run['seed']}.{'ogg' if fmt == 'opus' else fmt}"
    assert _console_errors(browser) == []


def test_a_bad_duration_shows_the_422_message(browser, stereo_app):
    _open(browser, stereo_app)
    _fill(browser, prompt="too long", duration="500", seed="1", format="wav")
    run = _generate(browser)
    assert run["error"] and run["samples"] == 0
    message = browser.find_element(By.ID, "message")
    assert message.is_displayed()
    assert message.text == "422: duration must be in (0, 120] seconds, got 500"
    assert browser.find_element(By.ID, "generate").is_enabled()


def test_an_audio_prompt_goes_as_a_multipart_upload(browser, stereo_app, tmp_path):
    t = np.arange(SR // 2) / SR
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    path = tmp_path / "tone.wav"
    sf.write(path, np.stack([tone, tone], axis=1), SR)
    _open(browser, stereo_app)
    _fill(browser, prompt="continue this", duration="1.5", seed="4", format="wav")
    browser.find_element(By.ID, "audio-prompt").send_keys(str(path))
    run = _generate(browser)
    assert not run.get("error") and run["samples"] == run["planned"] == int(1.5 * SR)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return window.playground.run.download !== null"))
    wav = _fetch(browser, browser.execute_script("return window.playground.run.download"))
    with path.open("rb") as upload:  # the server's answer to the same multipart request
        form = {"input": "continue this", "duration": "1.5", "seed": "4"}
        files = {"audio_prompt": ("tone.wav", upload, "audio/wav")}
        expected = requests.post(f"{stereo_app}/v1/audio/generations", data=form, files=files, timeout=WAIT_S)
    assert wav == expected.content
    browser.find_element(By.ID, "audio-prompt").clear()


def test_a_full_server_shows_the_429_message(browser, stereo_app):
    """The app's 2 slots and 2 queue places taken by held streams: the page's request is turned away."""
    _open(browser, stereo_app)
    held = []
    try:
        for i in range(4):
            body = {"input": f"hold {i}", "duration": 120, "seed": i, "stream": True}
            held.append(requests.post(f"{stereo_app}/v1/audio/generations", json=body, stream=True, timeout=WAIT_S))
            assert held[-1].status_code == 200
        _fill(browser, prompt="one too many", duration="1", seed="1", format="wav")
        run = _generate(browser)
        assert run["error"]
        message = browser.find_element(By.ID, "message").text
        assert message.startswith("429: the server is at capacity") and "retry after 2 s" in message
    finally:
        for response in held:
            response.close()  # the server cancels their rows at its next step

    def idle() -> bool:
        engine = requests.get(f"{stereo_app}/healthz", timeout=10).json()["engine"]
        return engine["active"] + engine["queued"] == 0

    poll(idle, 60, "the engine to drop the held streams")


def test_the_page_is_one_self_contained_document(stereo_app):
    """Served from package data with its script and stylesheet inline: nothing fetched from elsewhere."""
    r = requests.get(f"{stereo_app}/", timeout=WAIT_S)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script>" in page and "<style>" in page and "LivePlayer" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<!-- playground." not in page  # every marker was replaced


def test_a_server_with_api_keys_takes_the_key_in_the_page(browser, keyed_app, api_keys):
    """The keyed app (docs/design.md §22): without a key the page shows the API's 401; a revoked key its 403;
    with a valid one the model loads and a generation is the server's answer to the same keyed request. The key
    is kept for the tab (sessionStorage) and sent as ``Authorization: Bearer``."""
    browser.get(f"{keyed_app}/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    message = browser.find_element(By.ID, "message")
    WebDriverWait(browser, WAIT_S).until(lambda d: message.is_displayed() and message.text)
    assert message.text.startswith("401: this server needs an API key") and "API key field" in message.text
    assert browser.execute_script("return window.playground.model") is None

    def enter(key: str) -> None:
        field = browser.find_element(By.ID, "api-key")
        field.clear()
        field.send_keys(key)
        browser.find_element(By.ID, "prompt").click()  # leaving the field commits it ("change")

    enter(api_keys["bob"])
    WebDriverWait(browser, WAIT_S).until(lambda d: message.text.startswith("403:"))
    assert message.text.startswith("403: API key 'bob' has been revoked")
    enter(api_keys["page"])
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return window.playground.model !== null"))
    assert not message.is_displayed()
    browser.refresh()  # the key is kept for the tab
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return window.playground.model !== null"))
    browser.get_log("browser")
    _fill(browser, prompt="keyed", duration="1", seed="3", format="wav")
    run = _generate(browser)
    assert not run.get("error") and run["samples"] == run["planned"] == SR
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return window.playground.run.download !== null"))
    wav = _fetch(browser, browser.execute_script("return window.playground.run.download"))
    headers = {"Authorization": f"Bearer {api_keys['page']}"}
    body = {"input": "keyed", "duration": 1, "seed": 3}
    expected = requests.post(f"{keyed_app}/v1/audio/generations", json=body, headers=headers, timeout=WAIT_S)
    assert expected.status_code == 200 and wav == expected.content
    assert _console_errors(browser) == []
    browser.execute_script("sessionStorage.clear()")  # the other tests' pages (same origin) start without a key
