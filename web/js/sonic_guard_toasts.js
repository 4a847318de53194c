// Sonic Guard: toasts for what the memory guard did to a run (events pushed by the server with send_sync).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const EVENTS = {
  "sonic_guard.downgraded": ["warn", "Sonic Guard downgraded the run"],
  "sonic_guard.oom_recovered": ["warn", "Sonic Guard recovered from out-of-memory"],
  "sonic_guard.evicted": ["info", "Sonic Guard made room by unloading another model"],
  "sonic_guard.refused": ["error", "Sonic Guard: the run does not fit"],
};
const LIFE_MS = 15000;

function toast(severity, summary, detail) {
  const manager = app.extensionManager?.toast;
  if (manager) manager.add({ severity, summary, detail, life: LIFE_MS });
  else console.warn(`[Sonic Guard] ${summary}: ${detail}`);
}

export function installToasts() {
  for (const [event, [severity, summary]] of Object.entries(EVENTS)) {
    api.addEventListener(event, ({ detail }) => toast(severity, summary, detail?.message ?? ""));
  }
}
