#!/usr/bin/env bash
# Build the CPU image (Dockerfile) and smoke-test it: a tiny export mounted at /model, API keys on, then
# /healthz, a 401 without a key, a WAV with one, and no torch in the image. .ci/run calls this only where
# `docker info` succeeds (a container engine runs); it needs the CI venv (the export extra, for the tiny export).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${MUSICGEN_ONNX_IMAGE:-musicgen-onnx:ci}
work=$(mktemp -d)
cid=""
cleanup() {
    if [ -n "$cid" ]; then docker logs "$cid" > "$work/container.log" 2>&1 || true; docker rm -f "$cid" > /dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

docker build -t "$image" -f Dockerfile .
docker image inspect "$image" --format 'image {{.RepoTags}}: {{.Size}} bytes'
docker run --rm --entrypoint python "$image" -c \
    "import importlib.util as u, sys; sys.exit('torch is in the image' if u.find_spec('torch') else 0)"

python - "$work" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from tiny_checkpoint import build_tiny_checkpoint
from musicgen_onnx.export import export_model
work = Path(sys.argv[1])
export_model(str(build_tiny_checkpoint(work / "checkpoint", channels=1, seed=0)), work / "model")
PY
mkdir -p "$work/keys"
musicgen-onnx serve-keys --file "$work/keys/keys.json" add ci > "$work/key"
chmod 755 "$work/keys" && chmod 644 "$work/keys/keys.json"  # the image's user (uid 1000) reads the digests
chmod -R a+rX "$work/model"

cid=$(docker run -d -p 127.0.0.1::8000 --shm-size=1g -v "$work/model:/model:ro" -v "$work/keys:/keys:ro" \
    -e MUSICGEN_ONNX_API_KEYS_FILE=/keys/keys.json "$image" --threads 1)
port=$(docker port "$cid" 8000/tcp | head -n 1 | sed 's/.*://')
python - "$port" "$work/key" <<'PY'
import io, sys, time
import requests, soundfile as sf
base, key = f"http://127.0.0.1:{sys.argv[1]}", open(sys.argv[2]).read().strip()
deadline = time.monotonic() + 300
while True:
    try:
        if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
            break
    except requests.RequestException:
        pass
    if time.monotonic() > deadline:
        raise SystemExit("the container did not become healthy within 300 s")
    time.sleep(2)
body = {"input": "container smoke test", "duration": 1.0, "seed": 1}
url = f"{base}/v1/audio/generations"
assert requests.post(url, json=body, timeout=120).status_code == 401
r = requests.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
assert r.status_code == 200, r.text
audio, rate = sf.read(io.BytesIO(r.content))
assert rate == 32000 and len(audio) == 32000, (rate, audio.shape)
print(f"container smoke test passed: /healthz, 401 without a key, {len(audio)} samples with one")
PY
