// Sonic Guard editor extension: a pre-flight memory badge on the generator, toasts for downgrades, OOM
// recoveries and refusals, a live GPU memory readout, and a fixed seed on new generators. Official hooks only
// (registerExtension, beforeRegisterNodeDef, nodeCreated, api events, the toast manager). The other
// sonic_guard_*.js files export helpers, except sonic_guard_model_download.js (the loader's download action).
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
  // A new generator starts with its seed fixed, not randomized: a rerun of a cancelled long job then resumes from
  // its finished segments. Saved workflows keep their own choice (their widget values are applied after this).
  nodeCreated(node) {
    if (node.comfyClass !== "SonicGuardGenerate") return;
    const control = node.widgets?.find((widget) => widget.name === "control_after_generate");
    if (control) control.value = "fixed";
  },
});
