// mammolens web page: vanilla JS, no external resources (works offline).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { files: [], sidecar: null, classes: ["A", "B", "C", "D"], maxMb: 200, words: null };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function pct(p) { return (100 * p).toFixed(0) + "%"; }

  function setStatus(msg, kind) {
    const s = $("status");
    s.textContent = msg || "";
    s.className = "status" + (kind ? " " + kind : "");
  }

  function fmtSize(bytes) {
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(0) + " KB";
    return (bytes / 1024 / 1024).toFixed(1) + " MB";
  }

  function setFiles(list) {
    state.files = Array.from(list || []);
    const total = state.files.reduce((a, f) => a + f.size, 0);
    $("file-summary").textContent = state.files.length
      ? state.files.length + " file" + (state.files.length > 1 ? "s" : "") + " selected · " + fmtSize(total)
      : "No files selected.";
    $("predict-btn").disabled = state.files.length === 0;
    $("clear-btn").disabled = state.files.length === 0;
    if (total > state.maxMb * 1024 * 1024) {
      setStatus("These files total " + fmtSize(total) + "; the server accepts at most " + state.maxMb + " MB per request.", "error");
      $("predict-btn").disabled = true;
    } else {
      setStatus("");
    }
  }

  function probBars(probs) {
    const box = el("div", "probs");
    state.classes.forEach((c) => {
      const p = probs && probs[c] !== undefined ? probs[c] : 0;
      box.appendChild(el("div", null, c));
      const track = el("div", "track");
      const fill = el("div", "fill");
      fill.style.width = pct(p);
      fill.style.background = "var(--" + c + ", #888)";
      track.appendChild(fill);
      box.appendChild(track);
      box.appendChild(el("div", "num", pct(p)));
    });
    return box;
  }

  function stackBar(probs) {
    const wrap = el("div");
    const bar = el("div", "stack");
    state.classes.forEach((c) => {
      const seg = el("div");
      const p = probs && probs[c] !== undefined ? probs[c] : 0;
      seg.style.width = pct(p);
      seg.style.background = "var(--" + c + ", #888)";
      seg.title = c + " " + pct(p);
      bar.appendChild(seg);
    });
    wrap.appendChild(bar);
    const legend = el("div", "legend");
    state.classes.forEach((c) => {
      const item = el("span");
      const sw = el("i");
      sw.style.background = "var(--" + c + ", #888)";
      item.appendChild(sw);
      item.appendChild(document.createTextNode(c + " " + pct(probs && probs[c] ? probs[c] : 0)));
      legend.appendChild(item);
    });
    wrap.appendChild(legend);
    return wrap;
  }

  function pill(c) { return el("span", "pill " + (c || ""), c || "–"); }

  // the task's words (Task.wording): header, class descriptions, dense labels; no dense rule -> no dense wording
  function hasDense() { return !!(state.words && state.words.dense_label); }

  function applyWords(words) {
    if (!words) return;
    state.words = words;
    if (words.title) $("subtitle").textContent = words.title + " · from a mammography study";
    $("breast-dense-head").classList.toggle("hidden", !hasDense());
  }

  function showRandomWeights(reason) {
    const box = $("random-weights");
    box.classList.toggle("hidden", !reason);
    box.textContent = reason ? "Random weights — " + reason : "";
  }

  function denseBadge(node, dense) {
    if (!hasDense() || dense === null || dense === undefined) { node.className = "badge hidden"; node.textContent = ""; return; }
    node.className = "badge " + (dense ? "dense" : "nondense");
    node.textContent = dense ? state.words.dense_label : state.words.non_dense_label;
  }

  function render(data) {
    if (Array.isArray(data.classes) && data.classes.length) state.classes = data.classes;
    applyWords(data.task);
    if ("random_weights" in data) showRandomWeights(data.random_weights);
    const far = !!data.outside_training_distribution;
    $("ood-alert").classList.toggle("hidden", !far);
    $("ood-alert").textContent = far ? "Outside the training distribution — these images do not look like the ones this model was "
      + "trained on (median out-of-distribution score above the training set's); its predictions cannot be trusted." : "";
    $("results").classList.remove("hidden");

    const exam = (data.exams || [])[0];
    const letter = $("exam-letter");
    if (exam) {
      letter.textContent = exam.pred;
      letter.className = "letter " + exam.pred;
      $("exam-desc").textContent = exam.description || (data.descriptions || {})[exam.pred] || "";
      denseBadge($("exam-dense"), exam.dense);
      $("exam-probs").replaceChildren(probBars(exam.probs));
      if ((data.exams || []).length > 1) {
        $("exam-desc").textContent += " (first of " + data.exams.length + " exams)";
      }
    } else {
      letter.textContent = "–";
      letter.className = "letter";
      $("exam-desc").textContent = "No exam-level result";
      $("exam-dense").className = "badge hidden";
      $("exam-probs").replaceChildren();
    }

    const tbody = $("breast-table").querySelector("tbody");
    tbody.replaceChildren();
    const sideName = { L: "Left", R: "Right" };
    (data.breasts || []).forEach((b) => {
      const tr = el("tr");
      tr.appendChild(el("td", null, (sideName[b.laterality] || b.laterality || "?") + ((data.exams || []).length > 1 ? " · " + b.study : "")));
      const td = el("td"); td.appendChild(pill(b.pred)); tr.appendChild(td);
      if (hasDense()) tr.appendChild(el("td", null, b.dense ? "yes" : "no"));
      const tp = el("td"); tp.appendChild(stackBar(b.probs)); tr.appendChild(tp);
      tbody.appendChild(tr);
    });
    if (!(data.breasts || []).length) {
      const tr = el("tr"); const td = el("td", "muted", "No per-breast result (laterality unknown)."); td.colSpan = hasDense() ? 4 : 3;
      tr.appendChild(td); tbody.appendChild(tr);
    }

    const cards = $("images");
    cards.replaceChildren();
    (data.images || []).forEach((im) => {
      const card = el("div", "card");
      const thumb = el("div", "thumb");
      if (im.overlay) {
        const img = el("img");
        img.src = im.overlay;
        img.alt = "heat map for " + (im.file || "image");
        // the figure is the original image at full size: the card scales it to fit; record both sizes
        img.addEventListener("load", () => {
          img.dataset.natural = img.naturalWidth + "x" + img.naturalHeight;
          const r = img.getBoundingClientRect();
          img.dataset.shown = Math.round(r.width) + "x" + Math.round(r.height);
        });
        thumb.appendChild(img);
      } else {
        thumb.appendChild(el("div", "none", "no heat map"));
      }
      card.appendChild(thumb);
      const meta = el("div", "meta");
      meta.appendChild(el("div", "name", im.file));
      if (im.overlay && im.gradcam_class) meta.appendChild(el("div", "caption", "heat map: GradCAM for class " + im.gradcam_class));
      const tags = el("div", "tags");
      const assessable = im.assessable !== false;
      tags.appendChild(assessable ? pill(im.pred) : el("span", "tag", "not assessable"));
      if (im.ood) tags.appendChild(el("span", "tag ood", "outside the training distribution"));
      [im.laterality, im.view, im.modality].forEach((t) => { if (t) tags.appendChild(el("span", "tag", t)); });
      meta.appendChild(tags);
      if (assessable) meta.appendChild(stackBar(im.probs));
      else meta.appendChild(el("div", "reason", "No result: " + (im.quality_reason || "image failed the quality gate")));
      card.appendChild(meta);
      cards.appendChild(card);
    });

    const errs = data.errors || [];
    $("errors-panel").classList.toggle("hidden", errs.length === 0);
    const ul = $("errors");
    ul.replaceChildren();
    errs.forEach((e) => {
      const li = el("li");
      li.appendChild(el("b", null, e.file));
      li.appendChild(document.createTextNode(": " + e.reason));
      ul.appendChild(li);
    });
  }

  async function predict() {
    if (!state.files.length) return;
    const form = new FormData();
    state.files.forEach((f) => form.append("files", f, f.name));
    if (state.sidecar) form.append("sidecar", state.sidecar, state.sidecar.name);
    $("predict-btn").disabled = true;
    document.body.dataset.state = "busy";
    setStatus("Predicting " + state.files.length + " file(s)…", "busy");
    try {
      const res = await fetch("/api/predict", { method: "POST", body: form });
      let data = null;
      try { data = await res.json(); } catch (e) { data = null; }
      if (!res.ok) {
        const msg = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : res.status + " " + res.statusText;
        throw new Error(msg);
      }
      render(data);
      const n = (data.images || []).length;
      setStatus("Done: " + n + " image" + (n === 1 ? "" : "s") + " in " + (data.elapsed_s || 0).toFixed(1) + " s" + ((data.errors || []).length ? " · " + data.errors.length + " file(s) not used" : "") + (data.warnings || []).map((w) => " · " + w).join(""));
      document.body.dataset.state = "done";
    } catch (err) {
      setStatus("Prediction failed: " + err.message, "error");
      document.body.dataset.state = "error";
    } finally {
      $("predict-btn").disabled = state.files.length === 0;
    }
  }

  // A synthetic two-view sample (drawn here, no download) for ?demo=1 and quick checks.
  function demoFile(side, seed) {
    return new Promise((resolve) => {
      const w = 192, h = 256;
      const c = document.createElement("canvas");
      c.width = w; c.height = h;
      const g = c.getContext("2d");
      g.fillStyle = "#000"; g.fillRect(0, 0, w, h);
      const cx = side === "L" ? 0 : w;
      const grd = g.createRadialGradient(cx, h / 2, 10, cx, h / 2, w * 0.95);
      grd.addColorStop(0, "#d8d8d8"); grd.addColorStop(0.7, "#8a8a8a"); grd.addColorStop(1, "#303030");
      g.fillStyle = grd;
      g.beginPath(); g.ellipse(cx, h / 2, w * 0.8, h * 0.45, 0, 0, 2 * Math.PI); g.fill();
      let s = seed;
      for (let i = 0; i < 160; i++) {
        s = (s * 16807) % 2147483647;
        const x = side === "L" ? (s % (w * 0.7)) : w - (s % (w * 0.7));
        const y = h / 2 + ((s >> 8) % (h * 0.7)) - h * 0.35;
        g.fillStyle = "rgba(255,255,255,0.10)";
        g.beginPath(); g.arc(x, y, 3 + (s % 7), 0, 2 * Math.PI); g.fill();
      }
      c.toBlob((b) => resolve(new File([b], "demo_" + side + "_CC.png", { type: "image/png" })), "image/png");
    });
  }

  async function runDemo() {
    const files = await Promise.all([demoFile("L", 7), demoFile("R", 11)]);
    setFiles(files);
    await predict();
  }

  async function health() {
    try {
      const res = await fetch("/api/health");
      const h = await res.json();
      $("model").textContent = "model: " + h.model + (h.task ? " · " + h.task : "");
      if (Array.isArray(h.classes)) state.classes = h.classes;
      applyWords(h.wording);
      showRandomWeights(h.random_weights);
      if (h.max_upload_mb) state.maxMb = h.max_upload_mb;
    } catch (e) {
      $("model").textContent = "server not reachable";
    }
  }

  function init() {
    const drop = $("drop");
    drop.addEventListener("click", (e) => { if (e.target === drop || !e.target.closest("label")) $("file-input").click(); });
    drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file-input").click(); } });
    ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
    drop.addEventListener("drop", (e) => setFiles(e.dataTransfer.files));
    $("file-input").addEventListener("change", (e) => setFiles(e.target.files));
    $("dir-input").addEventListener("change", (e) => setFiles(e.target.files));
    $("sidecar-input").addEventListener("change", (e) => {
      state.sidecar = (e.target.files || [])[0] || null;
      $("sidecar-summary").textContent = state.sidecar ? "sidecar: " + state.sidecar.name + " (groups the files into exams)" : "";
    });
    $("predict-btn").addEventListener("click", predict);
    $("clear-btn").addEventListener("click", () => {
      setFiles([]);
      $("file-input").value = ""; $("dir-input").value = ""; $("sidecar-input").value = "";
      state.sidecar = null; $("sidecar-summary").textContent = "";
      $("results").classList.add("hidden");
      document.body.dataset.state = "idle";
    });
    const ready = health();
    if (new URLSearchParams(window.location.search).get("demo") === "1") ready.then(runDemo);
  }

  window.mammolens = { render: render, predict: predict, runDemo: runDemo };
  init();
})();
