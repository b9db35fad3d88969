// Renders the gateway's /openapi.json: operations grouped by tag, a filter box, and
// each operation's parameters, body and answers. Plain DOM, no libraries, no network
// beyond the gateway itself.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// `code` spans for `backticked` words; everything else stays text (never HTML).
function prose(text) {
  const span = el("span");
  String(text || "").split("`").forEach((part, i) => {
    span.append(i % 2 ? el("code", {}, part) : document.createTextNode(part));
  });
  return span;
}

function operationView(path, method, op) {
  const body = el("div", { class: "body" });
  if (op.description) body.append(el("p", {}, prose(op.description)));
  if (op.parameters && op.parameters.length) {
    const rows = op.parameters.map((p) => el("tr", {},
      el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
      el("td", {}, p.required ? "required" : "optional")));
    body.append(el("h4", {}, "Parameters"), el("table", {}, ...rows));
  }
  if (op.requestBody) {
    const types = Object.keys(op.requestBody.content || {});
    body.append(el("h4", {}, "Body"), el("p", {}, types.join(", ")));
  }
  const answers = Object.entries(op.responses || {}).map(([code, r]) => el("tr", {},
    el("td", {}, el("code", {}, code)), el("td", {}, prose(r.description || "")),
    el("td", {}, Object.keys(r.content || {}).join(", "))));
  body.append(el("h4", {}, "Answers"), el("table", {}, ...answers));
  const item = el("details", {},
    el("summary", {}, el("span", { class: `method ${method}` }, method.toUpperCase()),
      el("span", { class: "path" }, path), el("span", { class: "summary" }, prose(op.summary))),
    body);
  item.dataset.search = `${method} ${path} ${op.summary || ""} ${(op.tags || []).join(" ")}`
    .toLowerCase();
  return item;
}

function render(spec) {
  document.getElementById("version").textContent = spec.info.version || "";
  document.getElementById("description").replaceChildren(prose(spec.info.description));
  const byTag = new Map();
  for (const [path, methods] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(methods)) {
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operationView(path, method, op));
    }
  }
  const main = document.getElementById("api");
  main.replaceChildren();
  // what a newcomer looks for first, then the rest by name
  const first = ["services", "gateway", "observability", "management"];
  const rank = (tag) => (first.includes(tag) ? first.indexOf(tag) : first.length);
  const tags = [...byTag.keys()].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  for (const tag of tags) {
    const section = el("section", {}, el("h2", {}, tag), ...byTag.get(tag));
    main.append(section);
  }
  const count = el("p", { class: "note", id: "count" });
  main.prepend(count);
  const filter = document.getElementById("filter");
  const apply = () => {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const section of main.querySelectorAll("section")) {
      let any = false;
      for (const item of section.querySelectorAll("details")) {
        const hit = words.every((w) => item.dataset.search.includes(w));
        item.hidden = !hit;
        if (hit) { any = true; shown += 1; }
      }
      section.hidden = !any;
    }
    count.textContent = `${shown} operations`;
  };
  filter.addEventListener("input", apply);
  apply();
}

fetch("/openapi.json", { headers: { Accept: "application/json" } })
  .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`/openapi.json answered ${r.status}`))))
  .then(render)
  .catch((err) => {
    document.getElementById("api").replaceChildren(
      el("p", { class: "error" }, `Could not load the description: ${err.message}`));
  });
