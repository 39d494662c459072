// The web chat page: keeps the conversation in memory, streams answers from /v1/chat/completions (SSE over
// fetch, so the request can carry a JSON body and be aborted), and sends the system prompt, temperature and
// max tokens with each request. No build step, no dependencies.
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

async function send(text) {
  const system = $("system").value.trim();
  const messages = [];
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, { role: "user", content: text });
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
    state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    $("status").textContent = finish === "length" ? "stopped at max tokens" : "";
  } catch (e) {
    if (e.name === "AbortError") {
      state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
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
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new-chat").addEventListener("click", newConversation);
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });

loadModel();
