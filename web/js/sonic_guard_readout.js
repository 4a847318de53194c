// Sonic Guard: a small live GPU memory readout in the corner of the editor.
// Polls GET /sonic/health, and shows each GPU Memory Readout node's figures when one runs.
import { api } from "../../../scripts/api.js";

export const READOUT_ID = "sonic-guard-gpu-readout";
const POLL_MS = 5000;
const gib = (bytes) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;

function shortReason(reason) {
  // "no NVIDIA driver library (libnvidia-ml not found): ..." -> "no NVIDIA driver library"
  return String(reason ?? "no GPU").split(/[(:]/)[0].trim();
}

function show(element, text, detail, source) {
  element.textContent = text;
  element.title = `Sonic Guard GPU memory\n${detail}`;
  element.dataset.source = source;
  element.dataset.updated = String(Date.now());
}

async function poll(element) {
  if (document.hidden) return;
  try {
    const response = await api.fetchApi("/sonic/health");
    const health = await response.json(); // 503 (degraded) still carries the snapshot
    const free = health.gpu?.free_bytes;
    const detail = `health: ${health.status}${health.problems?.length ? ` (${health.problems.join(", ")})` : ""}`;
    if (free == null) show(element, `Sonic GPU: n/a (${shortReason(health.gpu?.reason)})`,
      `${health.gpu?.reason ?? ""}\n${detail}`, "health");
    else show(element, `Sonic GPU: ${gib(free)} free`, `source: ${health.gpu.source}\n${detail}`, "health");
    element.dataset.status = health.status;
  } catch (error) {
    show(element, "Sonic GPU: health unavailable", String(error), "error");
  }
}

function showReadoutNode(element, numbers) {
  const parts = [];
  if (numbers.gpu_free_bytes != null) parts.push(`${gib(numbers.gpu_free_bytes)} free`);
  if (numbers.torch_allocated_bytes != null) parts.push(`torch ${gib(numbers.torch_allocated_bytes)}`);
  if (numbers.host_available_bytes != null) parts.push(`host RAM ${gib(numbers.host_available_bytes)} avail.`);
  show(element, `Sonic GPU (readout): ${parts.join(" · ") || "no figures"}`,
    JSON.stringify(numbers, null, 1), "readout");
}

export function installGpuReadout() {
  if (document.getElementById(READOUT_ID)) return;
  const element = document.createElement("div");
  element.id = READOUT_ID;
  Object.assign(element.style, {
    position: "fixed", left: "50%", bottom: "8px", transform: "translateX(-50%)", zIndex: 1000,
    padding: "2px 8px", borderRadius: "4px", font: "11px monospace", background: "rgba(30,30,30,0.85)",
    color: "#ddd", whiteSpace: "nowrap",
  });
  element.textContent = "Sonic GPU: …";
  document.body.appendChild(element);
  api.addEventListener("sonic_guard.gpu_memory", ({ detail }) => showReadoutNode(element, detail?.numbers ?? {}));
  poll(element);
  setInterval(() => poll(element), POLL_MS);
}
