// The demo page: pick or add a voice, speak over the WebSocket contract, play segments as they come.

import { Channel, Voices, closedText, defaultWebSocketUrl, loadConfig, withToken } from "./api.js";
import { Recorder, SegmentPlayer, parseWav, wavBlob } from "./audio.js";

const EMOTIONS = [
  ["高兴", "happy"], ["愤怒", "angry"], ["悲伤", "sad"], ["恐惧", "afraid"],
  ["反感", "disgusted"], ["低落", "melancholic"], ["惊讶", "surprised"], ["自然", "calm"],
];
const SERVER_PATH = "path:"; // the <option> value for "an audio file on the server" (no voice name has ":")
const $ = (id) => document.getElementById(id);

/** Everything the page knows; `window.indextts.state` lets tests (and the curious) read it. */
const state = {
  phase: "loading", // loading | idle | connecting | sent | queued | running | cancelling | done | cancelled | error
  config: null,
  sessionId: null,
  taskId: null,
  position: null,
  segmentsReceived: 0,
  segmentsScheduled: 0,
  segmentsPlayed: 0,
  segmentsStopped: 0,
  audioSeconds: 0,
  bytesReceived: 0,
  timing: null,
  error: null,
  status: "",
  voices: [],
  recordingSeconds: 0,
  recordedSeconds: null, // the length of the last recording's WAV
  lastUpload: null,
  lastRequest: null,
  caption: "", // the text of the segment playing now (from its cue)
  captionSegment: null,
  captions: [], // every caption shown, in order: { segment, text }
};
window.indextts = { state };

let channel = null;
let context = null;
let player = null;
const cues = new Map(); // segment index (from 1) -> its text, from the task's cues
let current = null; // the task in flight: { taskId, sentAt, chunks, sampleRate, cancelRequested }
let downloadUrl = null;
let sample = null; // { blob, filename } chosen for upload
const recorder = { instance: null, timer: null };
const voices = new Voices(() => $("token").value.trim());

function setPhase(phase) {
  state.phase = phase;
  document.body.dataset.state = phase;
  const busy = ["connecting", "sent", "queued", "running", "cancelling"].includes(phase);
  $("speak").disabled = busy;
  $("cancel").disabled = !(busy && current?.taskId && !current.cancelRequested);
}

function setStatus(text) {
  state.status = text;
  $("status").textContent = text;
}

function showError(message) {
  state.error = message;
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  state.error = null;
  $("error").hidden = true;
  $("error").textContent = "";
}

// ---- connection settings -------------------------------------------------------------------

function webSocketUrl() {
  const override = $("ws-url").value.trim();
  const base = override || defaultWebSocketUrl(state.config ?? { ws_port: 8770 });
  return withToken(base, $("token").value.trim());
}

function restoreSettings() {
  const query = new URLSearchParams(window.location.search);
  if (query.has("ws")) localStorage.setItem("indextts.wsUrl", query.get("ws").trim());
  $("ws-url").value = localStorage.getItem("indextts.wsUrl") ?? "";
  $("token").value = localStorage.getItem("indextts.token") ?? "";
  for (const [id, key] of [["ws-url", "indextts.wsUrl"], ["token", "indextts.token"]]) {
    $(id).addEventListener("change", () => {
      localStorage.setItem(key, $(id).value.trim());
      channel?.close();
      channel = null;
      if (id === "token") refreshVoices();
    });
  }
}

function describeConnection(text, kind) {
  $("connection-state").textContent = text;
  $("connection-state").dataset.kind = kind;
}

async function ensureChannel() {
  if (channel?.ready) return channel;
  const url = webSocketUrl();
  const fresh = new Channel(url, { onreply, onaudio, onclose: (event) => onclose(fresh, event) });
  describeConnection("connecting…", "busy");
  try {
    const welcome = await fresh.connect();
    state.sessionId = welcome.session_id;
  } catch (error) {
    describeConnection("not connected", "bad");
    throw error;
  }
  describeConnection("connected", "good");
  channel = fresh;
  return fresh;
}

function onclose(closed, event) {
  if (closed !== channel) return;
  channel = null;
  state.sessionId = null;
  describeConnection("not connected", "bad");
  if (current) {
    finishTask();
    setPhase("error");
    showError(closedText(closed.url, event));
  }
}

// ---- voices --------------------------------------------------------------------------------

async function refreshVoices(select = null) {
  if (state.config?.auth_required && !$("token").value.trim()) {
    fillVoiceLists([]);
    $("connection").open = true;
    $("connection-hint").textContent = "This server needs a token.";
    return;
  }
  try {
    state.voices = await voices.list();
  } catch (error) {
    state.voices = [];
    showError(error.message);
  }
  fillVoiceLists(state.voices, select);
}

function fillVoiceLists(list, select = null) {
  for (const [id, pathLabel] of [["voice", "prompt_audio"], ["emo-voice", "emo_audio"]]) {
    const element = $(id);
    const previous = select && id === "voice" ? select : element.value;
    element.replaceChildren(
      ...list.map((voice) => {
        const name = voice.name ?? voice.id;
        const seconds = typeof voice.duration === "number" ? ` (${voice.duration.toFixed(1)} s)` : "";
        return new Option(`${name}${seconds}`, name);
      }),
      new Option(`an audio file on the server (${pathLabel})…`, SERVER_PATH),
    );
    const names = list.map((voice) => voice.name ?? voice.id);
    element.value = names.includes(previous) || previous === SERVER_PATH ? previous : (names[0] ?? SERVER_PATH);
  }
  showVoiceInputs();
}

function showVoiceInputs() {
  $("prompt-path-row").hidden = $("voice").value !== SERVER_PATH;
  $("emo-path-row").hidden = $("emo-voice").value !== SERVER_PATH;
  $("voice-delete").disabled = $("voice").value === SERVER_PATH;
}

async function upload() {
  clearError();
  if (!sample) {
    showError("choose a file or record one first");
    return;
  }
  const name = $("new-voice-name").value.trim();
  $("upload-state").textContent = "uploading…";
  try {
    const added = await voices.add(name, sample.blob, sample.filename, $("new-voice-replace").checked);
    $("upload-state").textContent = `added ${added.name ?? name}`;
    await refreshVoices(added.name ?? name);
    // Last: an upload is done once the lists show the new voice, chosen.
    state.lastUpload = { name: added.name ?? name, type: sample.blob.type, bytes: sample.blob.size };
  } catch (error) {
    $("upload-state").textContent = "";
    showError(error.message);
  }
}

async function deleteVoice() {
  clearError();
  const name = $("voice").value;
  if (name === SERVER_PATH) return;
  try {
    await voices.remove(name);
    await refreshVoices();
  } catch (error) {
    showError(error.message);
  }
}

async function toggleRecording() {
  clearError();
  audioContext();
  if (recorder.instance?.recording) {
    clearInterval(recorder.timer);
    $("record").textContent = "Record";
    try {
      const wav = await recorder.instance.stop();
      sample = { blob: wav, filename: "recording.wav" };
      const seconds = (wav.size - 44) / 2 / context.sampleRate;
      state.recordedSeconds = seconds;
      $("record-state").textContent = `recorded ${seconds.toFixed(1)} s (WAV, ${Math.round(wav.size / 1024)} KB)`;
      $("new-voice-file").value = "";
    } catch (error) {
      showError(`recording failed: ${error.message}`);
    }
    return;
  }
  state.recordedSeconds = null;
  recorder.instance = new Recorder(context);
  try {
    await recorder.instance.start();
  } catch (error) {
    showError(`no microphone: ${error.message}`);
    return;
  }
  $("record").textContent = "Stop";
  recorder.timer = setInterval(() => {
    state.recordingSeconds = recorder.instance.seconds;
    $("record-state").textContent = `recording… ${state.recordingSeconds.toFixed(1)} s`;
  }, 100);
}

// ---- speaking ------------------------------------------------------------------------------

function audioContext() {
  // Created (or resumed) inside a click, so browsers let it play.
  context ??= new AudioContext();
  if (context.state === "suspended") context.resume();
  return context;
}

function emotionMode() {
  return document.querySelector('input[name="emo-mode"]:checked').value;
}

function buildRequest() {
  const request = { type: "tts_stream", text: $("text").value };
  if ($("voice").value === SERVER_PATH) request.prompt_audio = $("prompt-path").value;
  else request.voice = $("voice").value;
  const mode = emotionMode();
  request.emo_mode = mode;
  if (mode === "audio") {
    if ($("emo-voice").value === SERVER_PATH) request.emo_audio = $("emo-path").value;
    else request.emo_voice = $("emo-voice").value;
  } else if (mode === "vector") {
    request.emo_vector = EMOTIONS.map((_, index) => Number($(`emo-${index}`).value));
  } else if (mode === "text") {
    request.emo_text = $("emo-text").value;
  }
  if (mode === "audio" || mode === "text") request.emo_alpha = Number($("emo-alpha").value);
  for (const [id, field] of [["interval-silence", "interval_silence"], ["max-tokens", "max_tokens"], ["seed", "seed"]]) {
    if ($(id).value !== "") request[field] = Number($(id).value);
  }
  return Object.assign(request, { stream: true, format: "wav", details: true, timestamps: true });
}

function resetResult() {
  player?.stop();
  player = null;
  cues.clear();
  Object.assign(state, {
    taskId: null, position: null, segmentsReceived: 0, segmentsScheduled: 0, segmentsPlayed: 0,
    segmentsStopped: 0, audioSeconds: 0, bytesReceived: 0, timing: null, caption: "", captions: [],
  });
  showCaption("");
  $("segments").hidden = true;
  $("segments").tBodies[0].replaceChildren();
  $("timing").hidden = true;
  $("timing").replaceChildren();
  setDownload(null);
}

async function speak() {
  clearError();
  resetResult();
  const request = buildRequest();
  player = new SegmentPlayer(audioContext(), onPlayback);
  setPhase("connecting");
  setStatus("connecting…");
  try {
    await ensureChannel();
  } catch (error) {
    setPhase("error");
    setStatus("");
    showError(error.message);
    return;
  }
  current = { taskId: null, sentAt: performance.now(), firstAudio: null, chunks: [], sampleRate: 22050 };
  state.lastRequest = request;
  channel.send(request);
  setPhase("sent");
  setStatus("sent");
}

function onreply(reply) {
  if (!current) return;
  if (reply.status === "error") {
    if (reply.task_id !== null && reply.task_id !== current.taskId) return;
    const cancelled = current.cancelRequested;
    finishTask();
    if (cancelled) {
      setPhase("cancelled");
      setStatus(reply.message);
    } else {
      setPhase("error");
      setStatus("");
      showError(reply.message);
    }
    return;
  }
  if (reply.task_id !== current.taskId && current.taskId !== null) return;
  switch (reply.type) {
    case "queued":
      current.taskId = reply.task_id;
      state.taskId = reply.task_id;
      state.position = reply.position ?? null;
      setPhase("queued");
      setStatus(`queued${state.position ? ` (position ${state.position})` : ""}: ${reply.message}`);
      break;
    case "start":
      current.sampleRate = reply.sample_rate ?? current.sampleRate;
      setPhase("running");
      setStatus(`generating: ${reply.message}`);
      break;
    case "cancel":
      setStatus(reply.message);
      break;
    case "cue":
      // Announced before its segment's audio: segment index + 1 (the table counts from 1).
      cues.set(reply.index + 1, reply.text);
      break;
    case "end":
      state.timing = reply.timing ?? null;
      showTiming(reply.timing);
      finishTask();
      setPhase("done");
      setStatus(`${reply.message}: ${state.segmentsReceived} segment${state.segmentsReceived === 1 ? "" : "s"}, ${state.audioSeconds.toFixed(2)} s`);
      break;
  }
}

function onaudio(buffer) {
  if (!current || current.cancelRequested) return;
  const index = state.segmentsReceived + 1;
  const arrived = (performance.now() - current.sentAt) / 1000;
  current.firstAudio ??= arrived;
  let seconds = 0;
  try {
    const wav = parseWav(buffer);
    current.chunks.push(wav.pcm);
    current.sampleRate = wav.sampleRate;
    seconds = wav.pcm.byteLength / 2 / wav.channels / wav.sampleRate;
  } catch (error) {
    showError(`segment ${index}: ${error.message}`);
    return;
  }
  state.segmentsReceived = index;
  state.bytesReceived += buffer.byteLength;
  state.audioSeconds += seconds;
  addSegmentRow(index, seconds, arrived);
  setStatus(`generating: ${index} segment${index === 1 ? "" : "s"} received, ${state.audioSeconds.toFixed(2)} s of audio`);
  player.enqueue(index, buffer).catch((error) => showError(`segment ${index} cannot play: ${error.message}`));
}

function onPlayback(index, what, delay) {
  if (what === "playing") showCaption(cues.get(index) ?? "", index);
  else if ((what === "played" || what === "stopped") && state.captionSegment === index) showCaption("");
  state.segmentsScheduled = player.scheduled;
  state.segmentsPlayed = player.played;
  state.segmentsStopped = player.stopped;
  const cell = $("segments").querySelector(`tr[data-index="${index}"] td.playback`);
  if (cell) {
    cell.textContent = what === "scheduled" ? `in ${delay.toFixed(1)} s` : what;
    cell.dataset.state = what;
  }
}

/** The segment playing now, as its cue says it. */
function showCaption(text, segment = null) {
  state.caption = text;
  state.captionSegment = segment;
  if (text) state.captions.push({ segment, text });
  $("caption").textContent = text;
  $("caption").hidden = !text;
}

function addSegmentRow(index, seconds, arrived) {
  const row = document.createElement("tr");
  row.dataset.index = String(index);
  const cells = [[index, ""], [`${seconds.toFixed(2)} s`, ""], [`+${arrived.toFixed(2)} s`, ""], ["decoding", "playback"], [cues.get(index) ?? "", "text"]];
  for (const [text, className] of cells) {
    const cell = row.insertCell();
    cell.textContent = String(text);
    if (className) cell.className = className;
  }
  $("segments").tBodies[0].append(row);
  $("segments").hidden = false;
}

function showTiming(timing) {
  if (!timing) return;
  const rows = [
    ["waited in the queue", `${timing.queue_wait.toFixed(3)} s`],
    ["first audio (server)", `${timing.first_audio.toFixed(3)} s`],
    ["first audio (here)", current?.firstAudio != null ? `${current.firstAudio.toFixed(3)} s` : "–"],
    ["total", `${timing.total.toFixed(3)} s`],
    ["audio", `${timing.audio_seconds.toFixed(3)} s`],
    ["real-time factor", timing.rtf.toFixed(3)],
  ];
  $("timing").replaceChildren(
    ...rows.flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
  $("timing").hidden = false;
}

function finishTask() {
  if (current?.chunks.length) {
    setDownload(wavBlob(current.chunks, current.sampleRate), current.taskId);
  }
  current = null;
}

function setDownload(blob, taskId = "") {
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = blob ? URL.createObjectURL(blob) : null;
  const link = $("download");
  if (downloadUrl) {
    link.href = downloadUrl;
    link.download = `indextts-${(taskId ?? "audio").slice(0, 8)}.wav`;
    link.classList.remove("disabled");
    link.removeAttribute("aria-disabled");
  } else {
    link.removeAttribute("href");
    link.classList.add("disabled");
    link.setAttribute("aria-disabled", "true");
  }
}

function cancel() {
  if (!current?.taskId || !channel?.ready) return;
  current.cancelRequested = true;
  player?.stop();
  channel.send({ type: "cancel", task_id: current.taskId });
  setPhase("cancelling");
  setStatus("cancelling…");
}

// ---- set-up ---------------------------------------------------------------------------------

function buildSliders() {
  $("emo-vector").replaceChildren(
    ...EMOTIONS.map(([chinese, english], index) => {
      const label = document.createElement("label");
      label.className = "slider";
      const value = document.createElement("output");
      value.textContent = "0.00";
      const input = Object.assign(document.createElement("input"), {
        type: "range", min: "0", max: "1", step: "0.05", value: "0", id: `emo-${index}`,
      });
      input.addEventListener("input", () => (value.textContent = Number(input.value).toFixed(2)));
      label.append(`${chinese} ${english} `, value, input);
      return label;
    }),
  );
}

function showEmotionInputs() {
  const mode = emotionMode();
  for (const element of document.querySelectorAll("[data-mode]")) {
    element.hidden = !element.dataset.mode.split(" ").includes(mode);
  }
}

async function start() {
  buildSliders();
  restoreSettings();
  $("speak").addEventListener("click", speak);
  $("cancel").addEventListener("click", cancel);
  $("upload").addEventListener("click", upload);
  $("record").addEventListener("click", toggleRecording);
  $("voices-refresh").addEventListener("click", () => (clearError(), refreshVoices()));
  $("voice-delete").addEventListener("click", deleteVoice);
  $("voice").addEventListener("change", showVoiceInputs);
  $("emo-voice").addEventListener("change", showVoiceInputs);
  $("new-voice-file").addEventListener("change", () => {
    const file = $("new-voice-file").files[0];
    sample = file ? { blob: file, filename: file.name } : null;
    $("record-state").textContent = "";
  });
  $("emo-alpha").addEventListener("input", () => ($("emo-alpha-value").textContent = Number($("emo-alpha").value).toFixed(2)));
  for (const radio of document.querySelectorAll('input[name="emo-mode"]')) {
    radio.addEventListener("change", showEmotionInputs);
  }
  showEmotionInputs();
  try {
    state.config = await loadConfig();
  } catch (error) {
    state.config = { ws_port: 8770, auth_required: false };
    showError(error.message);
  }
  $("ws-url").placeholder = defaultWebSocketUrl(state.config);
  $("connection-hint").textContent = state.config.auth_required ? "This server needs a token." : "";
  await refreshVoices();
  setPhase("idle");
}

start();
