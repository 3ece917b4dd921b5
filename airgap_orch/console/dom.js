// Building the page from data that tenants and workers wrote: every text goes in with textContent (through el()),
// never as markup; a link is made only for an http(s) URL.

// el("td", {class: "x"}, "text", child, ...): attributes are set with setAttribute (never event handlers), children
// are nodes or text.
export function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) throw new Error("el() sets no event handlers: use addEventListener");
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function text(value) {
  if (value === undefined || value === null) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// A link for http and https URLs only (a `javascript:` or `data:` URI is shown as text, never followed).
export function safeLink(uri, label) {
  let parsed = null;
  try {
    parsed = new URL(uri);
  } catch (_) {
    parsed = null;
  }
  if (parsed && (parsed.protocol === "http:" || parsed.protocol === "https:")) {
    return el("a", { href: parsed.href, rel: "noopener noreferrer nofollow", target: "_blank" }, label || uri);
  }
  return el("span", { class: "uri" }, label || uri);
}

// A table of rows; columns: [{title, value(row) -> node or text}]. `empty`: what to say with no rows.
export function table(columns, rows, { empty = "none", caption } = {}) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("table", {},
    caption ? el("caption", {}, caption) : null,
    el("thead", {}, el("tr", {}, columns.map((column) => el("th", { scope: "col" }, column.title)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, columns.map((column) => {
      const value = column.value(row);
      return el("td", {}, value instanceof Node ? value : text(value));
    })))));
}

export function section(title, ...children) {
  return el("section", { class: "panel" }, el("h2", {}, title), ...children);
}

export function pre(value) {
  return el("pre", {}, typeof value === "string" ? value : JSON.stringify(value, null, 2));
}

export function jobLink(jobId) {
  return el("a", { href: `#/jobs/${encodeURIComponent(jobId)}` }, jobId);
}

export function age(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

export function button(label, onClick, attributes) {
  const node = el("button", { type: "button", ...(attributes || {}) }, label);
  node.addEventListener("click", onClick);
  return node;
}

// A small form: fields [{name, label, type?, required?, placeholder?, value?}]; onSubmit(values) on submit.
export function form(title, fields, submitLabel, onSubmit) {
  const inputs = {};
  const node = el("form", { class: "inline-form", "aria-label": title },
    el("h3", {}, title),
    fields.map((field) => {
      const id = `f-${title}-${field.name}`.replace(/[^A-Za-z0-9_-]/g, "-");
      const input = el("input", { id, name: field.name, type: field.type || "text", required: field.required,
        placeholder: field.placeholder, value: field.value, autocomplete: "off" });
      inputs[field.name] = input;
      return el("span", { class: "field" }, el("label", { for: id }, field.label), input);
    }),
    el("button", { type: "submit" }, submitLabel));
  node.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = {};
    for (const [name, input] of Object.entries(inputs)) values[name] = input.value.trim();
    onSubmit(values, node);
  });
  return node;
}
