// The server, seen from the page: its settings, the voice library (HTTP) and the contract (WebSocket).

/** An error to show as the server wrote it. */
export class ServerError extends Error {}

/** The page's settings from the HTTP port (`web/config.json`): the WebSocket port, whether a token is needed. */
export async function loadConfig() {
  const response = await fetch(new URL("web/config.json", document.baseURI), { cache: "no-store" });
  if (!response.ok) throw new ServerError(`web/config.json: HTTP ${response.status}`);
  return response.json();
}

/** The WebSocket URL beside this page: same host, ws or wss as the page, the server's WebSocket port. */
export function defaultWebSocketUrl(config, location = window.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const host = location.hostname.includes(":") ? `[${location.hostname}]` : location.hostname;
  return `${scheme}//${host}:${config.ws_port}/`;
}

/** `url` with `?token=` added (the WebSocket handshake cannot carry an Authorization header). */
export function withToken(url, token) {
  if (!token) return url;
  const parsed = new URL(url);
  parsed.searchParams.set("token", token);
  return parsed.toString();
}

/** The message an HTTP error carries: OpenAI's `{"error": {"message"}}`, else the body. */
async function failure(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    const message = body?.error?.message ?? body?.message ?? body?.error;
    if (typeof message === "string") return new ServerError(message);
  } catch {
    // not JSON: fall through to the text
  }
  return new ServerError(text.trim() || `HTTP ${response.status} ${response.statusText}`);
}

/** The voice library over the HTTP API (`/v1/audio/voices`), with the token as a Bearer header. */
export class Voices {
  constructor(token) {
    this.token = token;
  }

  async call(method, path, body) {
    const headers = this.token() ? { Authorization: `Bearer ${this.token()}` } : {};
    const response = await fetch(new URL(path, document.baseURI), { method, headers, body });
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  async list() {
    return (await this.call("GET", "v1/audio/voices")).voices;
  }

  async add(name, blob, filename, replace) {
    const form = new FormData();
    form.append("name", name);
    form.append("audio_sample", blob, filename);
    if (replace) form.append("replace", "true");
    return this.call("POST", "v1/audio/voices", form);
  }

  async remove(name) {
    return this.call("DELETE", `v1/audio/voices/${encodeURIComponent(name)}`);
  }
}

/**
 * One WebSocket connection on the contract. `connect()` resolves after the welcome; afterwards
 * `onreply(json)`, `onaudio(ArrayBuffer)` and `onclose(event)` receive what comes.
 */
export class Channel {
  constructor(url, { onreply, onaudio, onclose }) {
    this.url = url;
    this.onreply = onreply;
    this.onaudio = onaudio;
    this.onclose = onclose;
    this.socket = null;
    this.sessionId = null;
  }

  get ready() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN && this.sessionId !== null;
  }

  connect() {
    return new Promise((resolve, reject) => {
      let welcomed = false;
      const socket = new WebSocket(this.url);
      socket.binaryType = "arraybuffer";
      this.socket = socket;
      socket.onmessage = (event) => {
        if (typeof event.data !== "string") {
          this.onaudio(event.data);
          return;
        }
        const reply = JSON.parse(event.data);
        if (!welcomed) {
          welcomed = true;
          this.sessionId = reply.session_id;
          resolve(reply);
          return;
        }
        this.onreply(reply);
      };
      socket.onclose = (event) => {
        this.sessionId = null;
        if (!welcomed) {
          reject(new ServerError(closedText(this.url, event, true)));
        } else {
          this.onclose(event);
        }
      };
    });
  }

  send(message) {
    this.socket.send(JSON.stringify(message));
  }

  close() {
    if (this.socket) this.socket.close(1000, "page closed the connection");
  }
}

/** Why a WebSocket closed, in words. */
export function closedText(url, event, beforeWelcome = false) {
  const shown = url.replace(/([?&]token=)[^&]*/, "$1…");
  if (beforeWelcome) {
    // Browsers hide a refused handshake's status: 1006 is all the page learns.
    return `cannot connect to ${shown} (close code ${event.code}): check the WebSocket URL and the token`;
  }
  return `the connection closed (code ${event.code}${event.reason ? `: ${event.reason}` : ""})`;
}
