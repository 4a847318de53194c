// Sonic Guard: the pre-flight memory badge drawn above the generator (and the planning node).
// The server computes the plan (POST /sonic/plan) from the node's current widget values.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

export const BADGE_NODES = ["SonicGuardGenerate", "SonicGuardPlan"];
const LOADER = "SonicGuardModelLoader";
// Widgets that change the predicted memory or the plan; others (seed, prefix...) do not ask the server.
export const PLAN_WIDGETS = ["min_resolution", "inference_steps", "memory_policy", "preset", "time_budget_s",
  "interpolation", "duration", "dynamic_scale"];
const COLORS = { fits: "#2e7d32", downgrade: "#ef6c00", refuse: "#c62828", error: "#6d4c41", pending: "#455a64" };
const DEBOUNCE_MS = 250;

function widgetValues(node) {
  const values = {};
  for (const widget of node.widgets ?? []) {
    if (PLAN_WIDGETS.includes(widget.name)) values[widget.name] = widget.value;
  }
  const link = node.inputs?.find((input) => input.name === "sonic_model")?.link;
  const origin = link != null ? node.graph?.links?.[link] ?? app.graph.links[link] : null;
  let source = origin ? (node.graph ?? app.graph).getNodeById(origin.origin_id) : null;
  // Through a Profiling Tag or a GPU readout: follow the model link back to the loader.
  for (let hops = 0; source && source.type !== LOADER && hops < 4; hops++) {
    const upstream = source.inputs?.find((input) => input.link != null)?.link;
    const next = upstream != null ? (source.graph ?? app.graph).links[upstream] : null;
    source = next ? (source.graph ?? app.graph).getNodeById(next.origin_id) : null;
  }
  if (source?.type === LOADER) {
    values.model_folder = source.widgets?.find((w) => w.name === "model_folder")?.value;
    // The plan is made for the loader's precision, as the generator's run is.
    values.precision = source.widgets?.find((w) => w.name === "precision")?.value;
  }
  return values;
}

async function refreshBadge(node) {
  const ticket = node.sonicGuardTicket;
  let badge;
  try {
    const response = await api.fetchApi("/sonic/plan", { method: "POST", body: JSON.stringify(widgetValues(node)) });
    const plan = await response.json();
    badge = { verdict: plan.verdict ?? "error", text: plan.badge ?? plan.error ?? "no answer", plan };
  } catch (error) {
    badge = { verdict: "error", text: `plan unavailable: ${error}` };
  }
  if (node.sonicGuardTicket !== ticket) return; // a newer change is being planned
  node.sonicGuardBadge = badge;
  node.setDirtyCanvas(true, true);
}

export function scheduleBadge(node) {
  // Pending at once, so nobody reads the old verdict as the answer for the new values.
  node.sonicGuardTicket = (node.sonicGuardTicket ?? 0) + 1;
  node.sonicGuardBadge = { verdict: "pending", text: "planning…" };
  node.setDirtyCanvas?.(true, true);
  clearTimeout(node.sonicGuardTimer);
  node.sonicGuardTimer = setTimeout(() => refreshBadge(node), DEBOUNCE_MS);
}

export function drawBadge(node, ctx) {
  const badge = node.sonicGuardBadge;
  if (!badge || node.flags?.collapsed) return;
  const text = badge.text.length > 60 ? `${badge.text.slice(0, 57)}…` : badge.text;
  ctx.save();
  ctx.font = "11px sans-serif";
  const width = Math.min(node.size[0] - 8, ctx.measureText(text).width + 14);
  const y = -LiteGraph.NODE_TITLE_HEIGHT - 22;
  ctx.fillStyle = COLORS[badge.verdict] ?? COLORS.error;
  ctx.beginPath();
  ctx.roundRect(4, y, width, 18, 5);
  ctx.fill();
  ctx.fillStyle = "#fff";
  ctx.fillText(text, 11, y + 13, width - 14);
  ctx.restore();
}

function chain(prototype, method, after) {
  const original = prototype[method];
  prototype[method] = function (...args) {
    const result = original?.apply(this, args);
    after(this, ...args);
    return result;
  };
}

// Called from beforeRegisterNodeDef: wraps the node type's own lifecycle methods, keeping theirs.
export function installBadge(nodeType) {
  chain(nodeType.prototype, "onNodeCreated", (node) => {
    for (const widget of node.widgets ?? []) {
      if (!PLAN_WIDGETS.includes(widget.name)) continue;
      const callback = widget.callback;
      widget.callback = function (...args) {
        const out = callback?.apply(this, args);
        scheduleBadge(node);
        return out;
      };
    }
    scheduleBadge(node);
  });
  chain(nodeType.prototype, "onConfigure", (node) => scheduleBadge(node));
  chain(nodeType.prototype, "onConnectionsChange", (node) => scheduleBadge(node));
  chain(nodeType.prototype, "onDrawForeground", (node, ctx) => drawBadge(node, ctx));
}
