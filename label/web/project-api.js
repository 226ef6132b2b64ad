// The studio's HTTP API (label_image --serve --project_dir): the dataset, training and exports.
// Labelling goes through backend.js; this is only what a project adds.

async function call(path, init = {}) {
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new Error("the server cannot be reached");
  }
  let answer;
  try { answer = await response.json(); } catch { answer = { error: `HTTP ${response.status}` }; }
  if (!response.ok) {
    throw Object.assign(new Error(answer.error || `HTTP ${response.status}`),
                        { status: response.status, duplicateOf: answer.duplicate_of || null });
  }
  return answer;
}

const json = (method, body) => ({ method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
const cls = (name) => `/v1/dataset/${encodeURIComponent(name)}`;

// null when the server has no project (GET /v1/dataset is 404): a labelling page only.
export async function dataset() {
  try {
    return await call("/v1/dataset");
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}

export const addClass = (name) => call(cls(name), { method: "PUT" });
export const renameClass = (name, newName) => call(cls(name), json("PATCH", { name: newName }));
export const deleteClass = (name) => call(cls(name), { method: "DELETE" });
export const addClip = (name, blob, filename) => call(`${cls(name)}?filename=${encodeURIComponent(filename)}`,
  { method: "POST", body: blob, headers: { "Content-Type": blob.type || "application/octet-stream" } });
export const clipUrl = (name, clip) => `${cls(name)}/${encodeURIComponent(clip)}`;
export const moveClip = (name, clip, to) => call(clipUrl(name, clip), json("PATCH", { class: to }));
export const deleteClip = (name, clip) => call(clipUrl(name, clip), { method: "DELETE" });
export const train = () => call("/v1/train", { method: "POST" });
export const trainStatus = () => call("/v1/train");
export const cancelTraining = () => call("/v1/train", { method: "DELETE" });
export const report = () => call("/v1/train/report");
export const exports = () => call("/v1/export");

// The class a model label belongs to (the spectrograms stage's rule, as GET /v1/dataset gives it).
export function classOfLabel(data, label) {
  const found = (data && data.classes || []).find((c) => c.label === label || c.name === label);
  return found ? found.name : null;
}
