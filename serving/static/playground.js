"use strict";
// musicgen-onnx playground (docs/design.md §21). The clip is requested as a stream of int16 PCM
// (response_format "pcm", stream true) with fetch, so the page sees the status and error body of every answer.
// Each piece is played as it arrives: Web Audio buffers, scheduled back to back, feed a
// MediaStreamAudioDestinationNode that is the <audio> element's source. When the clip is whole and heard,
// the same element gets the WAV file (seekable, with its duration), and the download link the format picked.

const LEAD_S = 0.1; // the first piece is scheduled this far ahead of the audio clock (and after a gap)
const MIN_PIECE_S = 0.05; // network reads are gathered to at least this much audio before being scheduled

const $ = (id) => document.getElementById(id);
const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const EXTENSIONS = { wav: "wav", flac: "flac", mp3: "mp3", opus: "ogg" };
const KEY_STORE = "musicgen-onnx.api-key"; // sessionStorage: the key lives as long as the tab

function authHeaders() {
  // Sent as the API expects (docs/design.md §22); nothing when the field is empty (keys off).
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The page's state; window.playground is read by the browser tests and is handy in the console.
const state = { model: null, ctx: null, player: null, run: null, runs: 0, urls: [] };
window.playground = state;

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind === "error" ? "message" : "message note";
  box.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
  $("message").textContent = "";
}

async function errorMessage(response) {
  // The API answers {"error": {"message", "type", "code"}}; a proxy in between may answer something else.
  let text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) text = body.error.message;
  } catch (_) {
    text = text.slice(0, 300) || response.statusText;
  }
  const retry = response.headers.get("Retry-After");
  const hint = retry && !/retry/i.test(text) ? ` (retry after ${retry} s)` : "";
  return `${response.status}: ${text}${hint}`;
}

async function loadModel() {
  try {
    const response = await fetch(base + "v1/models", { headers: authHeaders() });
    if (response.status === 401 || response.status === 403) {
      $("model").textContent = "model unknown until an API key is entered";
      showMessage(`${await errorMessage(response)} (enter the key in the API key field)`);
      return;
    }
    if (!response.ok) throw new Error(await errorMessage(response));
    const m = (await response.json()).data[0];
    state.model = m;
    const layout = m.channels === 2 ? "stereo" : m.channels === 1 ? "mono" : `${m.channels} channels`;
    const random = m.random_weights ? " · random weights (noise)" : "";
    $("model").textContent =
      `${m.id} · ${m.precision} · ${m.device} · ${m.sampling_rate / 1000} kHz ${layout}${random}`;
    $("duration").value = m.default_duration;
    $("melody-field").hidden = !m.melody; // only melody checkpoints take one (a text model answers 422)
    $("duration").max = m.max_duration;
  } catch (e) {
    $("model").textContent = "model unknown";
    showMessage(`could not read /v1/models: ${e.message}`);
  }
}

function requestFields() {
  // Empty controls are left out: the server's defaults apply. The server checks every value (422).
  const fields = { input: $("prompt").value.trim() || null };
  const controls = [["duration", "duration"], ["seed", "seed"], ["guidance", "guidance_scale"], ["temperature", "temperature"]];
  for (const [id, name] of controls) {
    const text = $(id).value.trim();
    if (text !== "") fields[name] = Number(text);
  }
  return fields;
}

function requestInit(fields) {
  // JSON, or multipart when an audio prompt or a melody is attached (the form sends every field as text).
  const file = $("audio-prompt").files[0];
  const melody = $("melody-field").hidden ? undefined : $("melody").files[0];
  if (!file && !melody) {
    return { method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(fields) };
  }
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value === null ? "" : String(value));
  if (file) form.append("audio_prompt", file);
  if (melody) form.append("melody", melody);
  return { method: "POST", headers: authHeaders(), body: form };
}

function audioContext() {
  // Created and resumed inside the click: browsers start audio only after a user gesture.
  if (!state.ctx) state.ctx = new AudioContext();
  if (state.ctx.state === "suspended") state.ctx.resume();
  return state.ctx;
}

class LivePlayer {
  // Plays interleaved int16 pieces through the <audio> element as they arrive. The first piece plays at once.
  // If the stream falls behind playback (a model slower than real time), the player pauses once and holds
  // the next pieces until, at the rate audio has been arriving, the rest of the clip can play through.
  constructor(ctx, rate, channels, plannedFrames, element) {
    this.ctx = ctx;
    this.rate = rate;
    this.channels = channels;
    this.planned = plannedFrames;
    this.element = element;
    this.sink = ctx.createMediaStreamDestination();
    this.sources = [];
    this.next = 0;
    this.pauses = 0;
    this.holding = false;
    this.held = [];
    this.heldFrames = 0;
    this.arrived = 0;
    this.first = null; // {at, frames}: when the first piece arrived, and its size
    this.stopped = false;
    element.pause();
    element.removeAttribute("src");
    element.srcObject = this.sink.stream;
  }

  // Takes one piece (whole frames); returns the seconds until it is heard, or null while it is held.
  push(bytes) {
    const frames = bytes.byteLength / (2 * this.channels);
    this.arrived += frames;
    if (this.first === null) this.first = { at: performance.now(), frames };
    if (!this.holding && this.sources.length > 0 && this.next < this.ctx.currentTime + 0.005) {
      this.holding = true; // playback caught up with the stream: buffer before going on
      this.pauses += 1;
    }
    if (this.holding) {
      this.held.push(bytes);
      this.heldFrames += frames;
      if (this.canPlayThrough()) this.release();
      return null;
    }
    return this.schedule(bytes);
  }

  // Called after the last piece: whatever is held plays now.
  finish() {
    if (this.held.length > 0) this.release();
  }

  canPlayThrough() {
    const seconds = (performance.now() - this.first.at) / 1000;
    const speed = (this.arrived - this.first.frames) / this.rate / seconds; // audio seconds per second
    if (!(speed > 0)) return false;
    if (speed >= 1) return true;
    const missing = Math.max(0, this.planned - this.arrived) / this.rate;
    return this.heldFrames / this.rate >= 1.1 * missing * (1 / speed - 1) + LEAD_S;
  }

  release() {
    const held = this.held;
    this.held = [];
    this.heldFrames = 0;
    this.holding = false;
    for (const bytes of held) this.schedule(bytes);
  }

  // Schedules one piece right after the previous one (or LEAD_S from now); the seconds until it is heard.
  schedule(bytes) {
    const frames = bytes.byteLength / (2 * this.channels);
    const buffer = this.ctx.createBuffer(this.channels, frames, this.rate);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let c = 0; c < this.channels; c++) {
      const out = buffer.getChannelData(c);
      for (let i = 0; i < frames; i++) out[i] = view.getInt16(2 * (i * this.channels + c), true) / 32768;
    }
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.sink);
    const now = this.ctx.currentTime;
    const at = this.next < now + 0.005 ? now + LEAD_S : this.next;
    source.start(at);
    this.next = at + buffer.duration;
    this.sources.push(source);
    if (this.sources.length === 1) {
      // AbortError: a newer generation replaced the element's source before it started: nothing to report
      this.element.play().catch((e) => e.name === "AbortError" || showMessage(`playback: ${e.message}`));
    }
    return at - now;
  }

  // Resolves when the last scheduled piece has been heard.
  ended() {
    const last = this.sources[this.sources.length - 1];
    if (!last || this.stopped) return Promise.resolve();
    return new Promise((resolve) => last.addEventListener("ended", resolve, { once: true }));
  }

  stop() {
    this.stopped = true;
    for (const source of this.sources) {
      try {
        source.stop();
      } catch (_) {
        // not started yet or already stopped
      }
    }
    this.element.srcObject = null;
  }
}

function wavFile(parts, rate, channels) {
  const size = parts.reduce((n, p) => n + p.byteLength, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, s) => [...s].forEach((ch, i) => header.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF");
  header.setUint32(4, 36 + size, true);
  text(8, "WAVEfmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true);
  header.setUint16(22, channels, true);
  header.setUint32(24, rate, true);
  header.setUint32(28, rate * 2 * channels, true);
  header.setUint16(32, 2 * channels, true);
  header.setUint16(34, 16, true);
  text(36, "data");
  header.setUint32(40, size, true);
  return new Blob([header.buffer, ...parts], { type: "audio/wav" });
}

function objectURL(blob) {
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  return url;
}

function releaseURLs() {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
}

function seconds(ms) {
  return ms === null || ms === undefined ? "–" : `${(ms / 1000).toFixed(2)} s`;
}

function showStats(run) {
  $("ttfa").textContent = seconds(run.firstAudioMs);
  const clip = run.samples / run.rate;
  $("total").textContent = run.totalMs === null ? "generating…" : `${seconds(run.totalMs)} for ${clip.toFixed(2)} s of audio`;
  $("rtf").textContent = run.totalMs === null || clip === 0 ? "–" : (run.totalMs / 1000 / clip).toFixed(2) + (run.pauses ? ` (paused ${run.pauses}× to buffer)` : "");
  $("used-seed").textContent = run.seed ?? "–";
}

async function generate(event) {
  event.preventDefault();
  if (state.run && state.run.totalMs === null) return; // one generation at a time from this page
  clearMessage();
  const ctx = audioContext();
  if (state.player) state.player.stop();
  releaseURLs();
  $("download").hidden = true;
  $("download-status").textContent = "";
  const fields = requestFields();
  const format = $("format").value;
  const run = (state.run = {
    id: ++state.runs, fields, format, started: performance.now(), firstAudioMs: null, playingMs: null,
    totalMs: null, heardMs: null, samples: 0, planned: null, rate: 1, channels: 1, seed: null, pauses: 0, file: null, download: null,
  });
  $("generate").disabled = true;
  for (const id of ["ttfa", "rtf", "used-seed"]) $(id).textContent = "–";
  $("total").textContent = "waiting for the first audio…";
  try {
    const response = await fetch(base + "v1/audio/generations", requestInit({ ...fields, response_format: "pcm", stream: true }));
    if (!response.ok) {
      showMessage(await errorMessage(response));
      run.totalMs = performance.now() - run.started;
      run.error = true;
      $("total").textContent = "–";
      return;
    }
    run.seed = Number(response.headers.get("X-Seed"));
    run.rate = Number(response.headers.get("X-Audio-Sample-Rate"));
    run.channels = Number(response.headers.get("X-Audio-Channels"));
    run.planned = Number(response.headers.get("X-Audio-Samples"));
    const player = (state.player = new LivePlayer(ctx, run.rate, run.channels, run.planned, $("player")));
    $("player").addEventListener("playing", () => { run.playingMs ??= performance.now() - run.started; }, { once: true });
    const parts = await receive(response.body, run, player);
    run.totalMs = performance.now() - run.started;
    run.pauses = player.pauses;
    showStats(run);
    if (run.samples < run.planned) showMessage(`the stream ended early: ${run.samples} of ${run.planned} samples (see the server log)`);
    const wav = wavFile(parts, run.rate, run.channels);
    player.ended().then(() => {
      if (state.player !== player) return; // a newer generation took over the element
      run.heardMs = performance.now() - run.started; // the live playback's end
      player.element.srcObject = null;
      player.element.src = objectURL(wav);
      run.file = player.element.src;
    });
    await offerDownload(run, wav);
  } catch (e) {
    showMessage(`request failed: ${e.message}`);
    run.error = true;
    $("total").textContent = "–";
  } finally {
    if (run.totalMs === null) run.totalMs = performance.now() - run.started;
    $("generate").disabled = false;
  }
}

async function receive(body, run, player) {
  // Reads the stream, schedules whole frames of at least MIN_PIECE_S, keeps every byte for the file.
  const frameBytes = 2 * run.channels;
  const minBytes = Math.ceil(MIN_PIECE_S * run.rate) * frameBytes;
  const parts = [];
  let pending = [];
  let pendingBytes = 0;
  const flush = (final) => {
    if (pendingBytes === 0 || (!final && pendingBytes < minBytes)) return;
    const joined = new Uint8Array(pendingBytes);
    let offset = 0;
    for (const p of pending) {
      joined.set(p, offset);
      offset += p.byteLength;
    }
    const whole = joined.byteLength - (joined.byteLength % frameBytes);
    const piece = joined.subarray(0, whole);
    pending = whole < joined.byteLength ? [joined.slice(whole)] : [];
    pendingBytes = joined.byteLength - whole;
    if (whole === 0) return;
    parts.push(piece);
    run.samples += whole / frameBytes;
    const lead = player.push(piece);
    run.pauses = player.pauses;
    if (run.firstAudioMs === null && lead !== null) run.firstAudioMs = performance.now() - run.started + lead * 1000;
    showStats(run);
  };
  const reader = body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    pending.push(value);
    pendingBytes += value.byteLength;
    flush(false);
  }
  flush(true);
  player.finish();
  return parts;
}

async function offerDownload(run, wav) {
  // WAV is what was streamed. Other formats are encoded by the server from the whole clip: the same request
  // with the seed it used gives the same samples (the server decodes every clip the same way).
  let blob = wav;
  if (run.format !== "wav") {
    $("download-status").textContent = `encoding ${run.format}…`;
    const response = await fetch(base + "v1/audio/generations", requestInit({ ...run.fields, seed: run.seed, response_format: run.format }));
    if (!response.ok) {
      $("download-status").textContent = "";
      showMessage(`download as ${run.format}: ${await errorMessage(response)}`);
      return;
    }
    blob = await response.blob();
  }
  if (state.run !== run) return;
  const link = $("download");
  link.href = objectURL(blob);
  link.download = `musicgen-${run.seed}.${EXTENSIONS[run.format]}`;
  link.textContent = `Download ${run.format} (${(blob.size / 1024).toFixed(0)} KiB)`;
  link.hidden = false;
  $("download-status").textContent = "";
  run.download = link.href;
}

$("form").addEventListener("submit", generate);
$("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
  clearMessage();
  loadModel();
});
loadModel();
