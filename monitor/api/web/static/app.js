// Small helpers: every action goes through the same JSON API the pages read.
// A signed-in session proves each change came from its own page with the CSRF token
// the page was rendered with (the session cookie alone is not enough).
function csrfToken() {
  const meta = document.querySelector("meta[name=csrf-token]");
  return meta ? meta.content : "";
}
async function postJson(url, body) {
  const r = await fetch(url, {method: "POST", credentials: "same-origin",
                              headers: {"Content-Type": "application/json",
                                        "X-CSRF-Token": csrfToken()},
                              body: JSON.stringify(body)});
  const data = await r.json().catch(() => ({}));
  if (!r.ok) { throw new Error(data.detail || r.statusText); }
  return data;
}
function report(el, err) { el.textContent = err ? "Refused: " + err.message : ""; }
document.addEventListener("submit", async (ev) => {
  const form = ev.target;
  if (!form.dataset.api) { return; }
  ev.preventDefault();
  const out = form.querySelector(".result");
  try {
    if (form.dataset.kind === "alert") {
      await postJson(form.dataset.api + "/" + form.elements.action.value,
                     {actor: form.elements.actor.value, comment: form.elements.comment.value});
    } else if (form.dataset.kind === "sample") {
      const rows = [];
      for (const line of form.elements.results.value.split(/\n/)) {
        const cells = line.split(",").map((c) => c.trim());
        if (!cells[0] || cells[0] === "meter") { continue; }
        const passed = /^(1|true|yes|pass|passed)$/i.test(cells[2] || "");
        rows.push({meter: cells[0], error_pct: cells[1] === "" ? null : Number(cells[1]), passed});
      }
      await postJson(form.dataset.api, rows);
    }
    window.location.reload();
  } catch (err) { report(out, err); }
});
