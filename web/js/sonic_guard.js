// Sonic Guard editor extension: a pre-flight memory badge on the generator, toasts for downgrades, OOM
// recoveries and refusals, and a live GPU memory readout. Official hooks only (registerExtension,
// beforeRegisterNodeDef, api events, the toast manager). The other sonic_guard_*.js files only export helpers.
import { app } from "../../../scripts/app.js";
import { BADGE_NODES, installBadge } from "./sonic_guard_badge.js";
import { installGpuReadout } from "./sonic_guard_readout.js";
import { installToasts } from "./sonic_guard_toasts.js";

app.registerExtension({
  name: "sonic_guard.editor",
  async setup() {
    installToasts();
    installGpuReadout();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (BADGE_NODES.includes(nodeData.name)) installBadge(nodeType);
  },
});
