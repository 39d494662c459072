// The web chat page: keeps the conversation in memory, streams answers from /v1/chat/completions (SSE over
// fetch, so the request can carry a JSON body and be aborted), and sends the system prompt, temperature and
// max tokens with each request. No build step, no dependencies.
// Closed-context mode (airoboros): documents with metadata and one or more questions become the
// BEGININPUT/BEGININSTRUCTION prompt, and the cited sources of the answer are matched to the documents; both by
// the server's POST /v1/chatsmith/context, the same code as `chatsmith context` (prompt, --parse-reply).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, history: [], controller: null };

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = text;
  div.append(label, body);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return body;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models");
    const j = await r.json();
    if (!r.ok) throw new Error(j.error ? j.error.message : r.statusText);
    state.model = j.data[0].id;
    $("model").textContent = state.model;
  } catch (e) {
    $("status").textContent = `cannot list models: ${e.message}`;
  }
}

// Yields the parsed JSON of each `data:` event; stops at `data: [DONE]`.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// `ctx` (closed-context mode): {prompt, documents}; the prompt is sent alone (no history: the model was trained on
// single closed-context turns) and the answer's sources are shown when it is complete.
async function send(text, ctx) {
  const system = $("system").value.trim();
  const messages = [];
  if (system) messages.push({ role: "system", content: system });
  if (ctx) messages.push({ role: "user", content: ctx.prompt });
  else messages.push(...state.history, { role: "user", content: text });
  addMessage("user", text);
  const body = addMessage("assistant", "");
  const bubble = body.parentElement;
  bubble.classList.add("streaming");
  setBusy(true);
  $("status").textContent = "generating…";
  state.controller = new AbortController();
  let answer = "";
  let finish = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      signal: state.controller.signal,
      body: JSON.stringify({
        model: state.model, messages, stream: true,
        temperature: parseFloat($("temperature").value),
        max_tokens: parseInt($("max-tokens").value, 10) || 256,
      }),
    });
    if (!r.ok) {
      const j = await r.json().catch(() => ({}));
      throw new Error(j.error ? j.error.message : `${r.status} ${r.statusText}`);
    }
    for await (const chunk of sseEvents(r)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        answer += choice.delta.content;
        body.textContent = answer;
        bubble.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    if (ctx) await showSources(bubble, answer, ctx.documents);
    else state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    $("status").textContent = finish === "length" ? "stopped at max tokens" : "";
  } catch (e) {
    if (e.name === "AbortError") {
      if (!ctx) state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
      $("status").textContent = "stopped";
    } else {
      bubble.remove();
      addMessage("error", e.message).parentElement.classList.add("error");
      $("status").textContent = "";
    }
  } finally {
    bubble.classList.remove("streaming");
    bubble.dataset.done = "1";
    state.controller = null;
    setBusy(false);
  }
}

// ---- closed-context mode ----
async function contextCall(body) {
  const r = await fetch("/v1/chatsmith/context", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error ? j.error.message : `${r.status} ${r.statusText}`);
  return j;
}

function addDocument() {
  const doc = document.createElement("div");
  doc.className = "doc";
  const title = document.createElement("span");
  title.className = "doc-title";
  const meta = document.createElement("textarea");
  meta.className = "doc-meta";
  meta.rows = 3;
  meta.placeholder = "url: https://some.web.site/123\ndate: 2023-06-01";
  meta.setAttribute("aria-label", "metadata (key: value lines)");
  const text = document.createElement("textarea");
  text.className = "doc-text";
  text.rows = 3;
  text.placeholder = "the document's text";
  text.setAttribute("aria-label", "document text");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "doc-remove";
  remove.textContent = "Remove";
  remove.addEventListener("click", () => { doc.remove(); renumber(); });
  doc.append(title, meta, text, remove);
  $("documents").append(doc);
  renumber();
  return doc;
}

function renumber() {
  document.querySelectorAll("#documents .doc-title").forEach((t, i) => { t.textContent = `Document ${i + 1}`; });
}

// The documents as {metadata, text}; a metadata line that is not "key: value" is an error naming it.
function readDocuments() {
  return [...document.querySelectorAll("#documents .doc")].map((doc, i) => {
    const metadata = {};
    for (const line of doc.querySelector(".doc-meta").value.split("\n")) {
      if (!line.trim()) continue;
      const cut = line.indexOf(":");
      if (cut <= 0) throw new Error(`document ${i + 1}: metadata line "${line}" must read key: value`);
      metadata[line.slice(0, cut).trim()] = line.slice(cut + 1).trim();
    }
    return { metadata, text: doc.querySelector(".doc-text").value };
  });
}

async function sendInContext(text) {
  let ctx;
  try {
    const documents = readDocuments();
    const instructions = text.split("\n").filter((l) => l.trim());
    const built = await contextCall({
      documents, instructions, dont_make_up: $("dont-make-up").checked, preamble: $("only-instructions").checked,
    });
    ctx = { prompt: built.prompt, documents };
  } catch (e) {
    addMessage("error", e.message).parentElement.classList.add("error");
    return;
  }
  await send(text, ctx);
}

// The reply's cited sources, each matched to a document ("Document 2") or flagged as not one of them.
async function showSources(bubble, answer, documents) {
  const list = document.createElement("ul");
  list.className = "sources";
  try {
    const parsed = await contextCall({ documents, reply: answer });
    if (!parsed.sources.length) {
      const li = document.createElement("li");
      li.className = "source none";
      li.textContent = "No sources cited.";
      list.append(li);
    }
    parsed.sources.forEach((src, i) => {
      const hit = parsed.matches[i];
      const li = document.createElement("li");
      li.className = `source ${hit === null ? "unmatched" : "matched"}`;
      const what = document.createElement("span");
      what.className = "cited";
      what.textContent = Object.entries(src).map(([k, v]) => `${k}: ${v}`).join(", ");
      const ref = document.createElement("span");
      ref.className = "doc-ref";
      ref.textContent = hit === null ? " ⚠ not one of the documents" : ` → Document ${hit + 1}`;
      li.append(what, ref);
      list.append(li);
    });
  } catch (e) {
    const li = document.createElement("li");
    li.className = "source unmatched";
    li.textContent = `cannot read the sources: ${e.message}`;
    list.append(li);
  }
  bubble.append(list);
}

function setContextMode(on) {
  $("context-panel").hidden = !on;
  $("input").placeholder = on ? "Ask about the documents: one or more questions, one per line (Shift+Enter)"
    : "Send a message (Enter to send, Shift+Enter for a new line)";
  if (on && !document.querySelector("#documents .doc")) addDocument();
}

function newConversation() {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("messages").replaceChildren();
  $("status").textContent = "new conversation";
  $("input").focus();
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  if ($("context-mode").checked) sendInContext(text);
  else send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new-chat").addEventListener("click", newConversation);
$("context-mode").addEventListener("change", () => setContextMode($("context-mode").checked));
$("add-doc").addEventListener("click", () => addDocument().querySelector(".doc-meta").focus());
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });

loadModel();
