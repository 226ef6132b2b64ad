// The page's one door to a model (docs/label.md): all labelling and model information goes
// through a back-end whose answers are the HTTP API's JSON.
//   backend.model()                     -> what GET /v1/model answers
//   backend.label(blob, name, options)  -> what POST /v1/label answers ({error} thrown as an Error)
// ServerBackend asks `label_image --serve`; BrowserBackend (a page written by
// `label_image --export_web`) runs the model in this browser with TF.js: nothing leaves the device.
// index.html's <meta name="soundretrain-backend"> says which.

export async function createBackend() {
  const meta = document.querySelector('meta[name="soundretrain-backend"]');
  if (meta && meta.content === "browser") {
    const { BrowserBackend } = await import("./browser-backend.js");
    return BrowserBackend.create(new URL("./backend.json", import.meta.url));
  }
  return new ServerBackend();
}

export class ServerBackend {
  constructor(base = "") {
    this.kind = "server";
    this.base = base;
  }

  async model() {
    return this._json(await this._fetch("/v1/model"));
  }

  // options: {display (default true), topK}
  async label(blob, name, { display = true, topK } = {}) {
    const query = new URLSearchParams({ filename: name });
    if (display) query.set("display", "1");
    if (topK !== undefined) query.set("top_k", String(topK));
    return this._json(await this._fetch(`/v1/label?${query}`, {
      method: "POST", body: blob, headers: { "Content-Type": blob.type || "application/octet-stream" },
    }));
  }

  async _fetch(path, init) {
    try {
      return await fetch(this.base + path, init);
    } catch {
      throw new Error("the server cannot be reached");
    }
  }

  async _json(response) {
    let answer;
    try { answer = await response.json(); } catch { answer = { error: `HTTP ${response.status}` }; }
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    return answer;
  }
}
