// Audio in the page: WAV parsing and writing, gapless playback of segments, microphone to WAV.

/** The PCM and format of a WAV file (ArrayBuffer), or an Error naming what is wrong. */
export function parseWav(buffer) {
  const view = new DataView(buffer);
  const tag = (offset) => String.fromCharCode(...new Uint8Array(buffer, offset, 4));
  if (buffer.byteLength < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") {
    throw new Error("not a WAV file");
  }
  let format = null;
  for (let offset = 12; offset + 8 <= buffer.byteLength; ) {
    const id = tag(offset);
    let size = view.getUint32(offset + 4, true);
    const body = offset + 8;
    if (id === "fmt ") {
      format = {
        channels: view.getUint16(body + 2, true),
        sampleRate: view.getUint32(body + 4, true),
        bitsPerSample: view.getUint16(body + 14, true),
      };
    } else if (id === "data") {
      if (!format) throw new Error("WAV data before its format");
      size = Math.min(size, buffer.byteLength - body); // streamed headers may say 0xFFFFFFFF
      return { ...format, pcm: new Uint8Array(buffer, body, size) };
    }
    offset = body + size + (size % 2);
  }
  throw new Error("WAV file without data");
}

/** A WAV Blob holding 16-bit PCM chunks (Uint8Array) one after the other. */
export function wavBlob(chunks, sampleRate, channels = 1) {
  const size = chunks.reduce((total, chunk) => total + chunk.byteLength, 0);
  return new Blob([wavHeader(size, sampleRate, channels), ...chunks], { type: "audio/wav" });
}

function wavHeader(dataBytes, sampleRate, channels) {
  const header = new ArrayBuffer(44);
  const view = new DataView(header);
  const text = (offset, value) => [...value].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + dataBytes, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, channels, true);
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * channels * 2, true);
  view.setUint16(32, channels * 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, dataBytes, true);
  return header;
}

/** An AudioBuffer as a mono 16-bit WAV Blob (channels averaged). */
export function audioBufferToWav(audio) {
  const samples = new Int16Array(audio.length);
  const channels = [...Array(audio.numberOfChannels).keys()].map((c) => audio.getChannelData(c));
  for (let i = 0; i < audio.length; i++) {
    let sum = 0;
    for (const channel of channels) sum += channel[i];
    const value = Math.max(-1, Math.min(1, sum / channels.length));
    samples[i] = value < 0 ? value * 0x8000 : value * 0x7fff;
  }
  return wavBlob([new Uint8Array(samples.buffer)], audio.sampleRate, 1);
}

/**
 * Plays segments one after another without gaps, in the order they were given, as they arrive.
 * Counts what was scheduled, what played out and what was stopped; `onchange(index, state)`
 * follows each segment (scheduled, playing, played, stopped), and at most one segment is playing.
 *
 * The audio clock (`context.currentTime`) decides: a segment is playing once that clock reaches
 * its start, and has played out once it reaches its end. Timers and `ended` events only prompt a
 * look at the clock: timers run on the page's clock, and under load a timer and the previous
 * segment's `ended` event come in either order.
 */
export class SegmentPlayer {
  constructor(context, onchange) {
    this.context = context;
    this.onchange = onchange;
    this.sources = new Map(); // scheduled and not yet over: source -> { index, start, end, playing }
    this.nextStart = 0;
    this.decoding = Promise.resolve();
    this.generation = 0;
    this.timer = null; // wakes follow() when the next segment is due to start
    this.scheduled = 0;
    this.played = 0;
    this.stopped = 0;
  }

  /** Queue one segment (a complete WAV file); resolves once it is scheduled. */
  enqueue(index, wav) {
    const generation = this.generation;
    // decodeAudioData may settle out of order: chain them so segments keep their order.
    this.decoding = this.decoding.then(async () => {
      const audio = await this.context.decodeAudioData(wav.slice(0));
      if (generation !== this.generation) return;
      const source = this.context.createBufferSource();
      source.buffer = audio;
      source.connect(this.context.destination);
      const now = this.context.currentTime;
      const at = Math.max(now + 0.03, this.nextStart);
      this.nextStart = at + audio.duration;
      const segment = { index, start: at, end: this.nextStart, playing: false };
      source.onended = () => {
        if (!this.sources.has(source)) return; // stopped, or already counted as played out
        this.finish(source, segment);
        this.follow();
      };
      this.sources.set(source, segment);
      source.start(at);
      this.scheduled += 1;
      this.onchange(index, "scheduled", at - now);
      this.follow();
    });
    return this.decoding;
  }

  /** Bring every segment's state up to the audio clock, then look again when the next one starts. */
  follow() {
    const now = this.context.currentTime;
    for (const [source, segment] of this.sources) {
      if (segment.end <= now) this.finish(source, segment);
    }
    let next = null;
    for (const segment of this.sources.values()) {
      if (segment.start <= now && !segment.playing) {
        segment.playing = true;
        this.onchange(segment.index, "playing");
      } else if (segment.start > now) {
        next = next === null ? segment.start : Math.min(next, segment.start);
      }
    }
    clearTimeout(this.timer);
    // A timer may wake before the audio clock has got there: it then looks again, a little later.
    if (next !== null) this.timer = setTimeout(() => this.follow(), Math.max((next - now) * 1000, 5));
  }

  finish(source, segment) {
    this.sources.delete(source);
    this.played += 1;
    this.onchange(segment.index, "played");
  }

  /** Stop at once: nothing already scheduled plays on, and nothing still decoding will start. */
  stop() {
    this.generation += 1;
    clearTimeout(this.timer);
    for (const [source, segment] of this.sources) {
      this.sources.delete(source);
      source.stop();
      this.stopped += 1;
      this.onchange(segment.index, "stopped");
    }
    this.nextStart = 0;
  }
}

/** The microphone, recorded with MediaRecorder and turned into WAV in the page. */
export class Recorder {
  constructor(context) {
    this.context = context;
    this.recorder = null;
    this.chunks = [];
    this.startedAt = null;
  }

  get recording() {
    return this.recorder !== null;
  }

  /** Seconds since the recorder began to record (its start event), 0 before. */
  get seconds() {
    return this.recording && this.startedAt !== null ? (performance.now() - this.startedAt) / 1000 : 0;
  }

  /** Resolves once recording has begun: `start()` only asks, and a busy browser begins later. */
  async start() {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    this.chunks = [];
    this.startedAt = null;
    const recorder = new MediaRecorder(stream);
    this.recorder = recorder;
    recorder.ondataavailable = (event) => event.data.size && this.chunks.push(event.data);
    const started = new Promise((resolve) => (recorder.onstart = resolve));
    recorder.start();
    await started;
    this.startedAt = performance.now();
  }

  /** Stop and resolve with the recording as a mono 16-bit WAV Blob. */
  async stop() {
    const recorder = this.recorder;
    if (!recorder) throw new Error("not recording");
    const stopped = new Promise((resolve) => (recorder.onstop = resolve));
    recorder.stop();
    await stopped;
    recorder.stream.getTracks().forEach((track) => track.stop());
    this.recorder = null;
    const encoded = await new Blob(this.chunks, { type: recorder.mimeType }).arrayBuffer();
    const audio = await this.context.decodeAudioData(encoded);
    return audioBufferToWav(audio);
  }
}
