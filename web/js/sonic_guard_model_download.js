// Sonic Guard: "Download missing models" on the Sonic Model Loader's context menu. The server fetches the files
// from the Hugging Face Hub (POST /sonic/models/download); this file only asks, polls the job and draws its progress.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const LOADER = "SonicGuardModelLoader";
const POLL_MS = 1000;
const NO_MODELS = "(no Sonic models found)";
const FROM_MODEL_FOLDER = "from the model folder"; // the loader's svd_checkpoint default

function toast(severity, summary, detail) {
  const manager = app.extensionManager?.toast;
  if (manager) manager.add({ severity, summary, detail, life: 15000 });
  else console.warn(`[Sonic Guard] ${summary}: ${detail}`);
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

async function poll(node, jobId) {
  let job;
  try {
    job = await (await api.fetchApi(`/sonic/models/download/${jobId}`, { cache: "no-store" })).json();
  } catch (error) {
    job = { state: "failed", error: `progress unavailable: ${error}` };
  }
  node.sonicGuardDownload = job;
  node.setDirtyCanvas(true, true);
  if (job.state === "done") {
    toast("success", "Sonic models downloaded", `${job.files_total} files into ${job.dest}`);
    await app.refreshComboInNodes?.(); // the new folder appears in model_folder
  } else if (job.state === "failed" || job.error) {
    toast("error", "Sonic model download failed", job.error ?? "unknown error");
  } else {
    setTimeout(() => poll(node, jobId), POLL_MS);
  }
}

async function startDownload(node) {
  const current = node.widgets?.find((w) => w.name === "model_folder")?.value;
  const suggested = current && current !== NO_MODELS && current !== "." ? current : "sonic";
  const folder = window.prompt("Download the missing Sonic, whisper-tiny and SVD-xt files into models/sonic/", suggested);
  if (!folder) return;
  const look = await api.fetchApi(`/sonic/models/missing?folder=${encodeURIComponent(folder)}`);
  const found = await look.json();
  if (look.status !== 200) {
    toast("error", "Sonic model download not started", found.error ?? `HTTP ${look.status}`);
    return;
  }
  // VAE and image encoder read from an SVD checkpoint: the SVD folder is not needed.
  const svdSource = node.widgets?.find((w) => w.name === "svd_checkpoint")?.value;
  const what = found.missing.filter((part) => part !== "svd" || !svdSource || svdSource === FROM_MODEL_FOLDER);
  if (what.length === 0) {
    toast("info", "Sonic models complete", `models/sonic/${folder} already has every file`);
    return;
  }
  const response = await api.fetchApi("/sonic/models/download", {
    method: "POST",
    body: JSON.stringify({ folder, what }),
  });
  const answer = await response.json();
  if (response.status !== 202) {
    toast("error", "Sonic model download not started", answer.error ?? `HTTP ${response.status}`);
    return;
  }
  node.sonicGuardDownload = answer;
  poll(node, answer.job_id);
}

function drawProgress(node, ctx) {
  const job = node.sonicGuardDownload;
  if (!job || node.flags?.collapsed) return;
  const text = job.state === "downloading"
    ? `downloading ${job.files_done}/${job.files_total}: ${megabytes(job.done_bytes)} of ${megabytes(job.total_bytes)}`
    : job.state === "failed" ? "download failed (see the toast)" : `download ${job.state}`;
  const width = node.size[0] - 8;
  ctx.save();
  ctx.fillStyle = "#263238";
  ctx.fillRect(4, node.size[1] + 4, width, 16);
  ctx.fillStyle = job.state === "failed" ? "#c62828" : "#2e7d32";
  ctx.fillRect(4, node.size[1] + 4, width * (job.fraction ?? 0), 16);
  ctx.fillStyle = "#fff";
  ctx.font = "11px sans-serif";
  ctx.fillText(text, 9, node.size[1] + 16, width - 10);
  ctx.restore();
}

app.registerExtension({
  name: "sonic_guard.model_download",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== LOADER) return;
    const menu = nodeType.prototype.getExtraMenuOptions;
    nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
      const result = menu?.apply(this, [canvas, options]);
      options.push({ content: "Download missing models", callback: () => startDownload(this) });
      return result;
    };
    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
      const result = draw?.apply(this, [ctx, ...rest]);
      drawProgress(this, ctx);
      return result;
    };
  },
});
