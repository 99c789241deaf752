"""API keys, per-key limits and the serve CLI's refusal to listen openly without them (docs/design.md §22).

The rules are tested on ``AccessControl`` itself with a fake clock (no Ray); a few HTTP tests then run them in
the session's Ray app with keys on (``keyed_app``: tests/conftest.py). Every wait is bounded.
"""

from __future__ import annotations

import io
import json
import time

import pytest
import requests
import soundfile as sf
from musicgen_onnx.runtime.cli import main as musicgen_cli
from musicgen_onnx.serving.auth import (
    KEYS_FILE_ENV,
    AccessControl,
    AccessDeniedError,
    KeyFileError,
    KeyStatus,
    add_key,
    hash_key,
    load_keys,
    revoke_key,
)
from musicgen_onnx.serving.cli import is_loopback
from musicgen_onnx.serving.cli import main as serve_cli
from serving_fixtures import poll

TIMEOUT = 120
SR = 32000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keyfile(tmp_path):
    path = tmp_path / "keys.json"
    keys = {
        "alice": add_key(path, "alice"),
        "bob": add_key(path, "bob"),
        "slow": add_key(path, "slow", rate_per_minute=30, burst=2),
        "single": add_key(path, "single", max_concurrent=1),
        "pair": add_key(path, "pair", rate_per_minute=1, burst=2, max_concurrent=1),
    }
    revoke_key(path, "bob")
    return path, keys


def _denied(call, status: int) -> AccessDeniedError:
    with pytest.raises(AccessDeniedError) as info:
        call()
    assert info.value.status == status, info.value.message
    return info.value


# ---- the rules, without Ray --------------------------------------------------------------------------------
def test_keys_off_admits_everyone():
    access = AccessControl(None)
    assert not access.enabled and access.identify(None) is None
    lease = access.admit("Bearer whatever")
    assert lease.key_id is None
    lease.release()


def test_401_without_a_key_with_a_malformed_header_or_an_unknown_key(keyfile):
    path, keys = keyfile
    access = AccessControl(str(path))
    for header, message in [
        (None, "this server needs an API key: send it as 'Authorization: Bearer <key>'"),
        ("", "this server needs an API key"),
        (f"Basic {keys['alice']}", "the Authorization header must be 'Bearer <key>'"),
        ("Bearer ", "the Authorization header must be 'Bearer <key>'"),
        ("Bearer mgk_not-a-key", "the API key is not valid"),
        (f"Bearer {keys['alice']}x", "the API key is not valid"),
    ]:
        error = _denied(lambda h=header: access.admit(h), 401)
        assert message in error.message and error.kind == "authentication_error"
        assert error.headers == {"WWW-Authenticate": "Bearer"} and error.key_id is None
    assert access.identify(f"Bearer {keys['alice']}").key_id == "alice"
    assert access.identify(f"bearer   {keys['alice']}  ").key_id == "alice"  # scheme case, spaces


def test_403_for_a_revoked_key_names_it(keyfile):
    path, keys = keyfile
    error = _denied(lambda: AccessControl(str(path)).admit(f"Bearer {keys['bob']}"), 403)
    assert error.message == "API key 'bob' has been revoked" and error.key_id == "bob"


def test_the_request_rate_is_a_token_bucket_and_429_names_it(keyfile):
    path, keys = keyfile
    clock = Clock()
    access = AccessControl(str(path), clock=clock)
    header = f"Bearer {keys['slow']}"  # burst 2, 30 per minute: one token every 2 s
    for _ in range(2):
        access.admit(header).release()
    error = _denied(lambda: access.admit(header), 429)
    assert error.key_id == "slow" and error.kind == "rate_limit_exceeded"
    assert error.message == "API key 'slow' is over its request rate (rate_per_minute=30, burst=2); retry after 2 s"
    assert error.headers == {"Retry-After": "2"}
    clock.now += 1.5  # 0.75 of a token: still refused, sooner
    assert _denied(lambda: access.admit(header), 429).headers == {"Retry-After": "1"}
    clock.now += 0.5
    access.admit(header).release()
    access.admit(f"Bearer {keys['alice']}").release()  # buckets are per key
    clock.now += 3600  # refilled to the burst, not beyond
    for _ in range(2):
        access.admit(header).release()
    _denied(lambda: access.admit(header), 429)


def test_concurrent_generations_per_key_and_release(keyfile):
    path, keys = keyfile
    access = AccessControl(str(path), retry_after_s=3)
    header = f"Bearer {keys['single']}"
    lease = access.admit(header)
    assert access.running("single") == 1
    error = _denied(lambda: access.admit(header), 429)
    assert "API key 'single' has 1 generation(s) in flight on this replica (max_concurrent=1)" in error.message
    assert error.headers == {"Retry-After": "3"}
    other = access.admit(f"Bearer {keys['alice']}")  # another key is not held up
    lease.release()
    lease.release()  # idempotent: a stream's end and its finalizer may both release
    assert access.running("single") == 0
    access.admit(header).release()
    other.release()


def test_a_refused_request_takes_no_token(keyfile):
    path, keys = keyfile
    access = AccessControl(str(path))
    header = f"Bearer {keys['pair']}"  # burst 2, 1 per minute, 1 at a time
    held = access.admit(header)
    for _ in range(3):
        assert "max_concurrent=1" in _denied(lambda: access.admit(header), 429).message
    held.release()
    access.admit(header).release()  # the second token is still there
    assert "over its request rate" in _denied(lambda: access.admit(header), 429).message


def test_the_file_is_reread_when_it_changes_and_a_broken_one_keeps_the_old_keys(keyfile, caplog):
    path, keys = keyfile
    clock = Clock()
    access = AccessControl(str(path), clock=clock)
    header = f"Bearer {keys['alice']}"
    access.identify(header)
    late = add_key(path, "late")
    assert _denied(lambda: access.identify(f"Bearer {late}"), 401)  # within the reload interval: not seen yet
    clock.now += 1.1
    assert access.identify(f"Bearer {late}").key_id == "late"
    revoke_key(path, "alice")
    clock.now += 1.1
    assert _denied(lambda: access.identify(header), 403).key_id == "alice"
    path.write_text("{broken")
    clock.now += 1.1
    with caplog.at_level("ERROR", logger="musicgen_onnx"):
        assert access.identify(f"Bearer {late}").key_id == "late"
    assert "API keys not reloaded, the 6 read before stay in force" in caplog.text


def test_the_file_holds_digests_only(keyfile):
    path, keys = keyfile
    text = path.read_text()
    for key in keys.values():
        assert key.startswith("mgk_") and len(key) > 40
        assert key not in text and hash_key(key) in text
    assert path.stat().st_mode & 0o777 == 0o600
    entries = load_keys(path)
    assert entries["bob"].status is KeyStatus.REVOKED and entries["slow"].limits.burst == 2
    assert entries["alice"].limits.rate_per_minute == 60 and entries["single"].limits.max_concurrent == 1


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "cannot be read as JSON"),
        ([], "expected a JSON object"),
        ({"keys": [{"id": "a", "sha256": "0" * 64}, {"id": "a", "sha256": "1" * 64}]}, "key id 'a' appears twice"),
        ({"keys": [{"id": "a", "sha256": "abc"}]}, "sha256 must be 64 lowercase hex digits"),
        ({"keys": [{"id": "a b", "sha256": "0" * 64}]}, "keys[0].id must be 1-64 letters"),
        ({"keys": [{"id": "a", "sha256": "0" * 64, "key": "x"}]}, "unknown fields ['key']"),
        ({"keys": [{"id": "a", "sha256": "0" * 64, "status": "paused"}]}, "status must be one of active, revoked"),
        ({"keys": [{"id": "a", "sha256": "0" * 64, "burst": 0}]}, "burst must be an integer >= 1, got 0"),
        ({"defaults": {"rate_per_minute": -1}, "keys": []}, "rate_per_minute must be a number > 0"),
        ({"defaults": {"rpm": 1}, "keys": []}, "defaults may set rate_per_minute, burst, max_concurrent"),
        ({"version": 2, "keys": []}, "version must be 1"),
    ],
)
def test_a_bad_keys_file_is_refused_with_the_reason(tmp_path, document, message):
    path = tmp_path / "keys.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(KeyFileError) as info:
        load_keys(path)
    assert message in str(info.value) and str(path) in str(info.value)
    with pytest.raises(KeyFileError, match="does not exist"):
        AccessControl(str(tmp_path / "missing.json"))


def test_serve_keys_cli_prints_the_key_once(tmp_path, capsys, monkeypatch):
    path = tmp_path / "k.json"
    assert musicgen_cli(["serve-keys", "--file", str(path), "add", "carol", "--max-concurrent", "2"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("mgk_") and "shown only this once" in out.err and key not in path.read_text()
    assert AccessControl(str(path)).identify(f"Bearer {key}").limits.max_concurrent == 2
    monkeypatch.setenv(KEYS_FILE_ENV, str(path))  # the same variable `serve` reads
    assert musicgen_cli(["serve-keys", "revoke", "carol"]) == 0
    assert musicgen_cli(["serve-keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("carol\trevoked\trate_per_minute=60 burst=10 max_concurrent=2") and key not in listed
    assert musicgen_cli(["serve-keys", "--file", str(path), "add", "carol"]) == 2
    assert "already has a key 'carol'" in capsys.readouterr().err
    assert musicgen_cli(["serve-keys", "--file", str(path), "revoke", "dave"]) == 2
    assert musicgen_cli(["serve-keys", "--file", str(path), "add", "eve", "--burst", "0"]) == 2
    assert "burst must be an integer >= 1, got 0" in capsys.readouterr().err


# ---- the serve CLI -----------------------------------------------------------------------------------------
def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "myhost.example"]))


def test_serve_refuses_an_open_host_without_keys(exported_mono, tmp_path, capsys, monkeypatch, keyfile):
    monkeypatch.delenv(KEYS_FILE_ENV, raising=False)
    yaml_path = tmp_path / "serve.yaml"
    base = [str(exported_mono), "--write-config", str(yaml_path)]  # --write-config: nothing is started
    assert serve_cli([*base, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 accepts connections from other machines, and no API keys are set" in err
    assert "--api-keys FILE" in err and KEYS_FILE_ENV in err and "--insecure" in err and "Traceback" not in err
    assert not yaml_path.exists()
    assert serve_cli([*base, "--host", "0.0.0.0", "--insecure"]) == 0
    assert serve_cli(base) == 0  # loopback: keys are off by default
    path, _ = keyfile
    assert serve_cli([*base, "--host", "0.0.0.0", "--api-keys", str(path)]) == 0
    assert f"api_keys_file: {path}" in yaml_path.read_text()
    monkeypatch.setenv(KEYS_FILE_ENV, str(path))
    assert serve_cli([*base, "--host", "::"]) == 0
    assert serve_cli([*base, "--api-keys", str(tmp_path / "none.json")]) == 2
    assert f"API keys file {tmp_path / 'none.json'} does not exist" in capsys.readouterr().err


# ---- over HTTP, on the session's Ray cluster ---------------------------------------------------------------
def _post(base: str, key: str | None, body: dict, **kwargs) -> requests.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return requests.post(f"{base}/v1/audio/generations", json=body, headers=headers, timeout=TIMEOUT, **kwargs)


def test_http_health_and_page_stay_open_the_api_needs_a_key(keyed_app, api_keys):
    assert requests.get(f"{keyed_app}/healthz", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{keyed_app}/", timeout=TIMEOUT).status_code == 200
    r = requests.get(f"{keyed_app}/v1/models", timeout=TIMEOUT)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    auth = {"Authorization": f"Bearer {api_keys['alice']}"}
    assert requests.get(f"{keyed_app}/v1/models", headers=auth, timeout=TIMEOUT).json()["data"][0]["channels"] == 1
    r = _post(keyed_app, None, {"input": "x", "duration": 0.5})
    assert r.status_code == 401 and "needs an API key" in r.json()["error"]["message"]
    assert _post(keyed_app, "mgk_wrong", {"input": "x", "duration": 0.5}).status_code == 401
    r = _post(keyed_app, api_keys["bob"], {"input": "x", "duration": 0.5})
    assert r.status_code == 403 and r.json()["error"]["message"] == "API key 'bob' has been revoked"
    r = _post(keyed_app, api_keys["alice"], {"input": "x", "duration": 0.5, "seed": 1})
    assert r.status_code == 200 and sf.read(io.BytesIO(r.content))[0].shape == (SR // 2,)
    assert requests.post(f"{keyed_app}/debug/stall", timeout=TIMEOUT).status_code == 401  # checked before the 404


def test_http_rate_limit_is_429_with_retry_after(keyed_app, api_keys):
    body = {"input": "x", "duration": 0.5}
    assert [_post(keyed_app, api_keys["slow"], body).status_code for _ in range(2)] == [200, 200]
    r = _post(keyed_app, api_keys["slow"], body)  # burst 2 spent, one more per minute
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    message = r.json()["error"]["message"]
    assert message.startswith("API key 'slow' is over its request rate (rate_per_minute=1, burst=2)")
    assert _post(keyed_app, api_keys["alice"], body).status_code == 200


def test_http_concurrent_streams_per_key(keyed_app, api_keys):
    key = api_keys["single"]
    with _post(keyed_app, key, {"input": "long", "duration": 60.0, "stream": True}, stream=True) as held:
        assert held.status_code == 200
        pieces = held.iter_content(chunk_size=4096)  # kept: a dropped iterator closes the connection
        next(pieces)  # generating
        r = _post(keyed_app, key, {"input": "second", "duration": 0.5})
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"
        assert "(max_concurrent=1)" in r.json()["error"]["message"]
        pieces.close()
    # the client went away: the stream's end releases the key's place
    poll(lambda: _post(keyed_app, key, {"input": "after", "duration": 0.5}).status_code == 200, 60, "the release")
    for _ in range(2):  # whole clips release their place when they are sent
        assert _post(keyed_app, key, {"input": "again", "duration": 0.5}).status_code == 200


def test_http_a_key_revoked_in_the_file_is_refused_without_a_restart(keyed_app, api_keys):
    late = add_key(api_keys["path"], "late")
    poll(lambda: _post(keyed_app, late, {"input": "x", "duration": 0.5}).status_code == 200, 30, "the new key")
    revoke_key(api_keys["path"], "late")
    started = time.monotonic()
    poll(lambda: _post(keyed_app, late, {"input": "x", "duration": 0.5}).status_code == 403, 30, "the revocation")
    print(f"revocation in effect after {time.monotonic() - started:.1f} s")
