"""The two HTML pages: the login form and the chat box. Plain HTML and vanilla JS, no assets."""

from __future__ import annotations

from html import escape

__all__ = ["home_page", "login_page"]

_STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
header { display: flex; justify-content: space-between; align-items: baseline; }
form.inline { display: inline; }
input, select, textarea, button { font: inherit; padding: .35rem .5rem; }
label { display: block; margin: .5rem 0; }
#log { border: 1px solid #ccc; border-radius: 6px; padding: .75rem; min-height: 12rem; white-space: pre-wrap; }
#log .user { color: #555; margin-top: .5rem; }
#log .assistant { margin-bottom: .5rem; }
#log .error, .error { color: #b00020; }
#ask { display: flex; gap: .5rem; margin-top: .75rem; }
#ask textarea { flex: 1; }
small { color: #666; }
"""


def _page(title: str, body: str, *, data: dict[str, str] | None = None) -> str:
    attrs = "".join(f' data-{name}="{escape(value)}"' for name, value in (data or {}).items())
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body{attrs}>{body}</body></html>"
    )


def login_page(error: str | None = None, username: str = "") -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page(
        "Sign in",
        f"""<h1>Sign in</h1>{message}
<form method="post" action="login">
  <label>Username <input name="username" value="{escape(username)}" autocomplete="username" required autofocus></label>
  <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
  <button type="submit">Sign in</button>
</form>
<p><small>Demo accounts: <code>demo</code> / <code>demo-password</code>,
<code>admin</code> / <code>admin-password</code>.</small></p>""",
    )


# The stream is NDJSON: one JSON object per line, each carrying the next piece of the answer.
# A line may arrive split across network reads, so text is buffered up to the last newline.
_CHAT_JS = """
const { api, csrfCookie, csrfHeader } = document.body.dataset;
const log = document.getElementById("log");
const form = document.getElementById("ask");
const prompt = document.getElementById("prompt");
const modelSelect = document.getElementById("model");
const messages = [];

function line(cls, text) {
  const div = document.createElement("div");
  div.className = cls;
  div.textContent = text;
  log.appendChild(div);
  return div;
}

async function loadModels() {
  const resp = await fetch(api + "/api/tags");
  if (!resp.ok) { line("error", "cannot list models: HTTP " + resp.status); return; }
  const { models } = await resp.json();
  for (const m of models) modelSelect.add(new Option(m.name, m.name));
}

function csrfToken() {
  const found = document.cookie.split("; ").find((c) => c.startsWith(csrfCookie + "="));
  return found ? decodeURIComponent(found.slice(csrfCookie.length + 1)) : "";
}

async function send(text) {
  messages.push({ role: "user", content: text });
  line("user", "you: " + text);
  const out = line("assistant", "");
  const resp = await fetch(api + "/api/chat", {
    method: "POST",
    headers: { "Content-Type": "application/json", [csrfHeader]: csrfToken() },
    body: JSON.stringify({ model: modelSelect.value, messages, stream: true }),
  });
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    out.className = "error";
    out.textContent = body.error || "HTTP " + resp.status;
    messages.pop();
    return;
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let pending = "", answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    const lines = pending.split("\\n");
    pending = lines.pop();
    for (const raw of lines) {
      if (!raw.trim()) continue;
      const part = JSON.parse(raw);
      if (part.error) { line("error", part.error); continue; }
      answer += (part.message && part.message.content) || "";
      out.textContent = answer;
    }
  }
  messages.push({ role: "assistant", content: answer });
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = prompt.value.trim();
  if (!text) return;
  prompt.value = "";
  form.querySelector("button").disabled = true;
  try { await send(text); } catch (err) { line("error", String(err)); }
  finally { form.querySelector("button").disabled = false; prompt.focus(); }
});
loadModels();
"""


def home_page(display_name: str, *, is_staff: bool, api_prefix: str, csrf_cookie: str, csrf_header: str) -> str:
    role = "administrator" if is_staff else "user"
    return _page(
        "Chat",
        f"""<header><h1>Chat</h1>
<span>{escape(display_name)} <small>({role})</small>
<form class="inline" method="post" action="logout"><button type="submit">Sign out</button></form></span></header>
<div id="log" aria-live="polite"></div>
<form id="ask">
  <select id="model" aria-label="Model"></select>
  <textarea id="prompt" rows="2" placeholder="Ask something" aria-label="Message" required></textarea>
  <button type="submit">Send</button>
</form>
<p><small>Requests go to <code>{escape(api_prefix)}/api/chat</code>, authenticated by this page's
session cookie and its CSRF token.</small></p>
<script>{_CHAT_JS}</script>""",
        data={"api": api_prefix, "csrf-cookie": csrf_cookie, "csrf-header": csrf_header},
    )
