// Sonic Guard editor extension: a pre-flight memory badge on the generator, toasts for downgrades and OOM
// recoveries, and a live GPU memory readout. Official hooks only (registerExtension, beforeRegisterNodeDef).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const GENERATOR = "SonicGuardGenerate";
const LOADER = "SonicGuardModelLoader";
const PLAN_WIDGETS = ["min_resolution", "inference_steps", "memory_policy", "preset", "time_budget_s",
  "interpolation", "duration"];
const BADGE_COLORS = { fits: "#2e7d32", downgrade: "#ef6c00", refuse: "#c62828", error: "#6d4c41",
  pending: "#455a64" };

function widgetValues(node) {
  const values = {};
  for (const widget of node.widgets ?? []) {
    if (PLAN_WIDGETS.includes(widget.name)) values[widget.name] = widget.value;
  }
  const link = node.inputs?.find((input) => input.name === "sonic_model")?.link;
  const origin = link != null ? app.graph.links[link] : null;
  const loader = origin ? app.graph.getNodeById(origin.origin_id) : null;
  if (loader?.type === LOADER) {
    values.model_folder = loader.widgets?.find((w) => w.name === "model_folder")?.value;
  }
  return values;
}

async function refreshBadge(node) {
  const ticket = (node.sonicGuardTicket ?? 0) + 1;
  node.sonicGuardTicket = ticket;
  node.sonicGuardBadge = { verdict: "pending", text: "planning…" };
  node.setDirtyCanvas(true, true);
  let badge;
  try {
    const response = await api.fetchApi("/sonic/plan", { method: "POST", body: JSON.stringify(widgetValues(node)) });
    const plan = await response.json();
    badge = { verdict: plan.verdict ?? "error", text: plan.badge ?? plan.error ?? "no answer", plan };
  } catch (error) {
    badge = { verdict: "error", text: `plan unavailable: ${error}` };
  }
  if (node.sonicGuardTicket !== ticket) return; // a newer change won
  node.sonicGuardBadge = badge;
  node.setDirtyCanvas(true, true);
}

function scheduleBadge(node) {
  clearTimeout(node.sonicGuardTimer);
  node.sonicGuardTimer = setTimeout(() => refreshBadge(node), 250);
}

function drawBadge(node, ctx) {
  const badge = node.sonicGuardBadge;
  if (!badge || node.flags?.collapsed) return;
  const text = badge.text.length > 60 ? `${badge.text.slice(0, 57)}…` : badge.text;
  ctx.save();
  ctx.font = "11px sans-serif";
  const width = Math.min(node.size[0] - 8, ctx.measureText(text).width + 14);
  const y = -LiteGraph.NODE_TITLE_HEIGHT - 22;
  ctx.fillStyle = BADGE_COLORS[badge.verdict] ?? BADGE_COLORS.error;
  ctx.beginPath();
  ctx.roundRect(4, y, width, 18, 5);
  ctx.fill();
  ctx.fillStyle = "#fff";
  ctx.fillText(text, 11, y + 13);
  ctx.restore();
}

function toast(severity, summary, detail) {
  const manager = app.extensionManager?.toast;
  if (manager) manager.add({ severity, summary, detail, life: 10000 });
  else console.warn(`[Sonic Guard] ${summary}: ${detail}`);
}

function installGpuReadout() {
  const element = document.createElement("div");
  element.id = "sonic-guard-gpu-readout";
  element.title = "Sonic Guard: GPU memory (from /sonic/health)";
  Object.assign(element.style, {
    position: "fixed", right: "8px", bottom: "8px", zIndex: 1000, padding: "2px 8px", borderRadius: "4px",
    font: "11px monospace", background: "rgba(30,30,30,0.8)", color: "#ddd", pointerEvents: "none",
  });
  element.textContent = "Sonic GPU: …";
  document.body.appendChild(element);
  const poll = async () => {
    if (document.hidden) return;
    try {
      const health = await (await api.fetchApi("/sonic/health")).json();
      const free = health.gpu?.free_bytes;
      element.textContent = free == null
        ? `Sonic GPU: ${health.gpu?.reason ?? "no GPU"}`
        : `Sonic GPU: ${(free / 2 ** 30).toFixed(1)} GiB free`;
      element.dataset.status = health.status;
    } catch (error) {
      element.textContent = "Sonic GPU: health unavailable";
    }
  };
  poll();
  setInterval(poll, 5000);
}

app.registerExtension({
  name: "sonic_guard.editor",
  async setup() {
    installGpuReadout();
    api.addEventListener("sonic_guard.downgraded", ({ detail }) =>
      toast("warn", "Sonic Guard downgraded the run", detail.message));
    api.addEventListener("sonic_guard.oom_recovered", ({ detail }) =>
      toast("warn", "Sonic Guard recovered from out-of-memory", detail.message));
    api.addEventListener("sonic_guard.refused", ({ detail }) =>
      toast("error", "Sonic Guard: the run does not fit", detail.message));
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== GENERATOR) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      for (const widget of this.widgets ?? []) {
        if (!PLAN_WIDGETS.includes(widget.name)) continue;
        const callback = widget.callback;
        widget.callback = (...args) => {
          const out = callback?.apply(widget, args);
          scheduleBadge(this);
          return out;
        };
      }
      scheduleBadge(this);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      scheduleBadge(this);
      return result;
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const result = onConnectionsChange?.apply(this, arguments);
      scheduleBadge(this);
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      drawBadge(this, ctx);
      return result;
    };
  },
});
