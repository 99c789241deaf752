# The lean CPU inference node (docs/design.md §22): the runtime (numpy, onnxruntime, tokenizers, soundfile,
# soxr) and the [serve] extra (Ray Serve, FastAPI); no torch, no transformers. The export directory is mounted
# read-only at /model; API keys come from a mounted keys file (see README "Container").
#
#   docker build -t musicgen-onnx .
#   docker run --rm -p 8000:8000 --shm-size=2g -v "$PWD/out/stereo-small:/model:ro" \
#       -v "$PWD/keys:/keys:ro" -e MUSICGEN_ONNX_API_KEYS_FILE=/keys/keys.json musicgen-onnx --threads 2
#
# Arguments after the image name are added to `musicgen-onnx serve /model --host 0.0.0.0` (e.g. --threads,
# --max-batch, --replicas auto, or --insecure to serve without keys).
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY export export
COPY graphs graphs
COPY serving serving
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/musicgen_onnx-*.whl)[serve]" && rm -rf /wheels \
    && useradd --create-home --uid 1000 musicgen
USER musicgen
WORKDIR /home/musicgen
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["musicgen-onnx", "serve", "/model", "--host", "0.0.0.0"]
CMD []
