"""The browser page at `/`: pick a video file, ask about it, watch the answer stream in; follow-up questions keep
the conversation (the video is sent inline as a data URL each time and the server's cache skips re-encoding it).
Plain HTML and fetch(): the page calls the same /v1/chat/completions endpoint as any OpenAI client."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tlv_jax video chat</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 760px; margin: 2em auto; padding: 0 1em; color: #222; }
  h1 { font-size: 1.4em; }
  .row { margin: .8em 0; }
  textarea { width: 100%; height: 4em; font: inherit; }
  button { font: inherit; padding: .4em 1.2em; }
  video { max-width: 100%; max-height: 240px; background: #000; display: none; }
  .turn { border-left: 3px solid #ccc; padding: .3em .8em; margin: .6em 0; white-space: pre-wrap;
          overflow-wrap: anywhere; }
  .user { border-color: #4a7fd6; }
  .assistant { border-color: #3aa66b; min-height: 1.2em; }
  .error { color: #b00020; }
  #status { color: #666; font-size: .9em; }
</style>
</head>
<body>
<h1>Ask about a video</h1>
<div class="row"><input type="file" id="file" accept="video/*"> <span id="model"></span></div>
<div class="row"><video id="preview" controls muted></video></div>
<div id="chat"></div>
<div class="row"><textarea id="question" placeholder="What happens in the video?"></textarea></div>
<div class="row"><button id="ask">Ask</button> <span id="status"></span></div>
<script>
const $ = (id) => document.getElementById(id);
let videoUrl = null, history = [];
fetch("/v1/models").then(r => r.json()).then(j => { $("model").textContent = "model: " + j.data[0].id; });
$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (!f) return;
  $("preview").src = URL.createObjectURL(f); $("preview").style.display = "block";
  const reader = new FileReader();
  reader.onload = () => { videoUrl = reader.result.replace(/^data:[^;]*;/, "data:" + (f.type || "video/mp4") + ";");
                          history = []; $("chat").innerHTML = ""; $("status").textContent = f.name + " ready"; };
  reader.readAsDataURL(f);
});
function turn(cls, text) {
  const d = document.createElement("div"); d.className = "turn " + cls; d.textContent = text;
  $("chat").appendChild(d); return d;
}
async function ask() {
  const q = $("question").value.trim();
  if (!videoUrl) { $("status").textContent = "pick a video first"; return; }
  if (!q) return;
  const content = history.length ? q : [{type: "video_url", video_url: {url: videoUrl}}, {type: "text", text: q}];
  const messages = history.concat([{role: "user", content: content}]);
  turn("user", q); $("question").value = "";
  const out = turn("assistant", ""); $("ask").disabled = true; $("status").textContent = "answering...";
  let answer = "";
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
                          body: JSON.stringify({messages: messages, stream: true, max_tokens: 256})});
    if (!r.ok) { const j = await r.json(); throw new Error(j.error.message); }
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\\n\\n")) >= 0) {
        const line = buf.slice(0, i).replace(/^data: /, ""); buf = buf.slice(i + 2);
        if (line === "[DONE]") continue;
        const j = JSON.parse(line);
        if (j.error) throw new Error(j.error.message);
        const c = j.choices[0];
        if (c.delta.content) { answer += c.delta.content; out.textContent = answer; }
        if (c.finish_reason) $("status").textContent = "done (" + c.finish_reason + ")";
      }
    }
    history = messages.concat([{role: "assistant", content: answer}]);
  } catch (e) {
    out.classList.add("error"); out.textContent = "error: " + e.message; $("status").textContent = "";
  } finally { $("ask").disabled = false; }
}
$("ask").addEventListener("click", ask);
</script>
</body>
</html>
"""
