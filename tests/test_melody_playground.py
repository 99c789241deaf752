"""The playground page's melody input in headless Chromium (the browser and helpers of tests/test_playground.py),
against the tiny stereo melody export served on the session's Ray cluster: the input shows only for melody
models, and a melody file goes as the multipart ``melody`` field (the download equals the server's answer to the
same form)."""

from __future__ import annotations

import numpy as np
import requests
import soundfile as sf
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_playground import WAIT_S, _console_errors, _fetch, _fill, _generate, _open, browser  # noqa: F401

RATE = 22050  # the file's rate: the runtime resamples it


def test_the_melody_input_shows_only_for_melody_models(browser, stereo_app, melody_app):  # noqa: F811
    _open(browser, stereo_app)
    assert not browser.find_element(By.ID, "melody").is_displayed()
    _open(browser, melody_app)
    assert browser.find_element(By.ID, "melody").is_displayed()
    assert _console_errors(browser) == []


def test_a_melody_goes_as_a_multipart_upload(browser, melody_app, tmp_path):  # noqa: F811
    t = np.arange(RATE) / RATE
    tune = (0.4 * np.sin(2 * np.pi * np.where(t < 0.5, 392.0, 261.63) * t)).astype(np.float32)
    path = tmp_path / "tune.wav"
    sf.write(path, tune, RATE)
    _open(browser, melody_app)
    _fill(browser, prompt="a rock song", duration="1.5", seed="4", format="wav")
    browser.find_element(By.ID, "melody").send_keys(str(path))
    run = _generate(browser)
    assert not run.get("error") and run["samples"] == run["planned"] == int(1.5 * 32000)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return window.playground.run.download !== null"))
    wav = _fetch(browser, browser.execute_script("return window.playground.run.download"))
    form = {"input": "a rock song", "duration": "1.5", "seed": "4"}
    with path.open("rb") as upload:  # the server's answer to the same multipart request
        files = {"melody": ("tune.wav", upload, "audio/wav")}
        expected = requests.post(f"{melody_app}/v1/audio/generations", data=form, files=files, timeout=WAIT_S)
    without = requests.post(f"{melody_app}/v1/audio/generations", json={**form, "duration": 1.5, "seed": 4},
                            timeout=WAIT_S)  # fmt: skip
    assert wav == expected.content != without.content
    browser.find_element(By.ID, "melody").clear()
