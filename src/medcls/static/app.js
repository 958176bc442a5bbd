// The medcls page: choose a model, send one file, show the answer. No external scripts.
"use strict";
const $ = (id) => document.getElementById(id);
let models = [];

function headers() {
  const t = $("token").value.trim();
  return t ? { Authorization: "Bearer " + t } : {};
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function needToken() {
  $("token").hidden = false;
  $("token-label").hidden = false;
  showError("This server needs an access token: type it below, then try again.");
}

async function loadModels() {
  const r = await fetch("/v1/models", { headers: headers() });
  if (r.status === 401 || r.status === 403) { needToken(); return; }
  if (!r.ok) { showError("Could not list the models (" + r.status + ")."); return; }
  models = await r.json();
  const sel = $("model");
  sel.innerHTML = "";
  for (const m of models) {
    const o = document.createElement("option");
    o.value = m.name;
    o.textContent = m.name + " (" + m.model + ", " + m.classes.join(" / ") + ")";
    sel.appendChild(o);
  }
  describe();
}

function describe() {
  const m = models.find((x) => x.name === $("model").value);
  if (!m) return;
  const auc = m.test_metrics && m.test_metrics.auc !== undefined ? ", test AUC " + m.test_metrics.auc.toFixed(3) : "";
  $("model-info").textContent = m.task + " task on " + m.modality + " images" + auc + "; " + m.preparation;
  $("explain").disabled = !m.explain;
}

function bars(probs) {
  const ul = $("bars");
  ul.innerHTML = "";
  for (const [name, p] of Object.entries(probs)) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = name;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", name + " " + (100 * p).toFixed(1) + " percent");
    const fill = document.createElement("span");
    fill.style.width = (100 * p).toFixed(1) + "%";
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "prob";
    value.textContent = p.toFixed(3);
    li.append(label, bar, value);
    ul.appendChild(li);
  }
}

async function classify(ev) {
  if (ev) ev.preventDefault();
  showError("");
  const f = $("file").files[0];
  if (!f) { showError("Choose a file first."); return; }
  const m = models.find((x) => x.name === $("model").value);
  if (!m) { showError("No model is selected."); return; }
  const body = new FormData();
  body.append("file", f);
  const q = "?preview=true" + ($("explain").checked && m.explain ? "&explain=gradcam" : "");
  $("status").textContent = "Classifying…";
  $("go").disabled = true;
  try {
    const r = await fetch("/v1/models/" + encodeURIComponent(m.name) + "/predict" + q,
                          { method: "POST", body, headers: headers() });
    const data = await r.json().catch(() => ({ error: "bad response", detail: "the server's answer was not JSON" }));
    if (r.status === 401 || r.status === 403) { needToken(); return; }
    if (!r.ok) {
      const d = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      showError("The server refused the file (" + r.status + " " + data.error + "): " + d);
      $("result").hidden = true;
      return;
    }
    $("class").textContent = data.class !== undefined ? data.class : (data.labels || []).join(", ") || "no label";
    bars(data.probabilities);
    $("prep").textContent = (data.items > 1 ? data.items + " slices/frames, averaged; " : "") + data.preparation;
    $("warnings").textContent = (data.warnings || []).join(" ");
    $("preview").src = "data:image/png;base64," + data.preview_png;
    if (data.explain) {
      $("heat").src = "data:image/png;base64," + data.explain.png;
      $("heat-fig").hidden = false;
    } else {
      $("heat-fig").hidden = true;
    }
    $("result").hidden = false;
    $("status").textContent = "Done.";
  } catch (e) {
    showError("The server could not be reached: " + e.message);
  } finally {
    $("go").disabled = false;
    if ($("status").textContent === "Classifying…") $("status").textContent = "";
  }
}

const drop = $("drop");
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) { $("file").files = e.dataTransfer.files; classify(); }
});
$("model").addEventListener("change", describe);
$("form").addEventListener("submit", classify);
$("token").addEventListener("change", loadModels);
loadModels();
