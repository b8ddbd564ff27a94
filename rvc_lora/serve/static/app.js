// rvc-lora web page: the same HTTP API as any client (GET /v1/models, GET /v1/adapters, POST /v1/convert).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("rvc-lora-token") || "", audio: null, audioName: "", resultUrl: null };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (state.token) headers.set("Authorization", "Bearer " + state.token);
  const response = await fetch(path, { ...init, headers });
  if (response.status === 401) $("token-box").hidden = false;
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    const e = body.error || {};
    return `${response.status}: ${e.field ? e.field + ": " : ""}${e.message || response.statusText}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function bindSlider(id) {
  const input = $(id), out = $(id + "-value");
  input.addEventListener("input", () => { out.textContent = input.value; });
}

async function loadModel() {
  const response = await api("/v1/models");
  if (!response.ok) { $("model-line").textContent = await errorText(response); return; }
  const m = await response.json();
  $("model-line").textContent = `${m.model}: RVC ${m.version}, ${m.sample_rate} Hz` +
    `${m.f0 ? ", pitch-guided" : ""}${m.index ? ", retrieval index" : ""}; up to ${m.limits.max_audio_seconds} s of audio`;
  const select = $("f0-method");
  select.replaceChildren(...m.f0_methods.map((name) => new Option(name, name, false, name === m.default_f0_method)));
  $("f0-method").closest(".row").hidden = !m.f0;
}

async function loadAdapters() {
  const box = $("adapters");
  const response = await api("/v1/adapters");
  if (!response.ok) { box.textContent = await errorText(response); return; }
  const { adapters } = await response.json();
  box.replaceChildren();
  if (!adapters.length) { box.textContent = "No adapters in the registry: the plain base model converts."; }
  for (const a of adapters) {
    const row = document.createElement("div");
    row.className = "adapter";
    const label = document.createElement("label");
    const id = "adapter-" + a.name;
    label.htmlFor = id;
    label.textContent = a.name + (a.rank ? ` (rank ${a.rank})` : "");
    const slider = Object.assign(document.createElement("input"),
      { type: "range", min: "-1", max: "2", step: "0.05", value: "0", id });
    slider.dataset.adapter = a.name;
    const value = document.createElement("output");
    value.textContent = "0";
    slider.addEventListener("input", () => { value.textContent = slider.value; });
    row.append(label, slider, value);
    if (a.error || a.base_match === false) {
      const warn = document.createElement("span");
      warn.className = "warn";
      warn.textContent = a.error || "made for a different base model: requests with it are refused";
      row.append(warn);
      slider.disabled = true;
    }
    box.append(row);
  }
}

function useAudio(blob, name) {
  state.audio = blob;
  state.audioName = name;
  const player = $("input-audio");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
  $("convert").disabled = false;
}

// --- recording: microphone samples through an AudioWorklet, encoded as a 16-bit WAV ---------------
let recorder = null;

function encodeWav(chunks, rate) {
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * length));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * length, true); text(8, "WAVE"); text(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * length, true);
  let offset = 44;
  for (const chunk of chunks) {
    for (const x of chunk) { view.setInt16(offset, Math.max(-1, Math.min(1, x)) * 32767, true); offset += 2; }
  }
  return new Blob([view], { type: "audio/wav" });
}

async function toggleRecording() {
  if (recorder) {
    recorder.stream.getTracks().forEach((t) => t.stop());
    await recorder.context.close();
    useAudio(encodeWav(recorder.chunks, recorder.context.sampleRate), "recording.wav");
    recorder = null;
    $("record").textContent = "Record";
    $("record-state").textContent = "";
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const context = new AudioContext();
    await context.audioWorklet.addModule("/static/recorder.js");
    const node = new AudioWorkletNode(context, "recorder");
    const chunks = [];
    node.port.onmessage = (event) => chunks.push(event.data);
    context.createMediaStreamSource(stream).connect(node);
    recorder = { stream, context, chunks };
    $("record").textContent = "Stop";
    $("record-state").textContent = "recording ...";
  } catch (err) {
    setStatus("cannot record: " + err.message, true);
  }
}

// --- conversion -------------------------------------------------------------------------------

function options() {
  const adapters = [...document.querySelectorAll("input[data-adapter]")]
    .filter((s) => !s.disabled && Number(s.value) !== 0)
    .map((s) => ({ name: s.dataset.adapter, strength: Number(s.value) }));
  const opts = {
    pitch: Number($("pitch").value), index_rate: Number($("index-rate").value),
    protect: Number($("protect").value), rms_mix: Number($("rms-mix").value),
    format: $("format").value, adapters,
  };
  if (!$("f0-method").closest(".row").hidden && $("f0-method").value) opts.f0_method = $("f0-method").value;
  return opts;
}

async function convert() {
  if (!state.audio) return;
  const opts = options();
  const form = new FormData();
  form.append("audio", state.audio, state.audioName);
  form.append("options", JSON.stringify(opts));
  $("convert").disabled = true;
  setStatus("converting ...");
  const started = performance.now();
  try {
    const response = await api("/v1/convert", { method: "POST", body: form });
    if (!response.ok) { setStatus(await errorText(response), true); return; }
    const blob = await response.blob();
    if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
    state.resultUrl = URL.createObjectURL(blob);
    const player = $("result-audio");
    player.src = state.resultUrl;
    const stem = state.audioName.replace(/\.[^.]*$/, "") || "audio";
    $("download").href = state.resultUrl;
    $("download").download = `${stem}-converted.${opts.format}`;
    $("result").hidden = false;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(`done in ${seconds} s (${response.headers.get("X-Audio-Seconds")} s of audio)`);
  } catch (err) {
    setStatus("request failed: " + err.message, true);
  } finally {
    $("convert").disabled = false;
  }
}

function init() {
  ["pitch", "index-rate", "protect", "rms-mix"].forEach(bindSlider);
  $("audio-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) useAudio(file, file.name);
  });
  $("record").addEventListener("click", toggleRecording);
  $("convert").addEventListener("click", convert);
  $("token").value = state.token;
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value.trim();
    sessionStorage.setItem("rvc-lora-token", state.token);
    loadModel(); loadAdapters();
  });
  loadModel(); loadAdapters();
}

init();
