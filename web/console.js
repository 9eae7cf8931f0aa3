// The operator's console. Plain JavaScript, no dependencies: it asks this labeler's XRPC
// methods and renders their answers. Every reason and every fix shown comes from the report
// the labeler produced; the page only lays it out. Text from the server is always inserted as
// text (never as HTML).
"use strict";

(function () {
  const XRPC = "/xrpc/email.atmos.";
  // How often, and how many times, the page asks for the new result after "Check again now".
  const POLL_MS = 1000;
  const POLL_TIMES = 90;

  const OUTCOMES = {
    "pass": { symbol: "\u2713", word: "pass" },
    "fail": { symbol: "\u2717", word: "fail" },
    "could-not-decide": { symbol: "?", word: "could not decide" },
  };

  const CHECK_NAMES = {
    "record": "Attestation record",
    "domain-control": "Domain control",
    "mx": "MX (receiving mail servers)",
    "spf": "SPF (who may send)",
    "dkim": "DKIM key",
    "dmarc": "DMARC policy",
    "relay-member": "Relay membership (informational)",
  };

  // Errors the page hit, kept for anyone who asks (and shown).
  window.consoleErrors = [];
  function pageError(message) {
    window.consoleErrors.push(String(message));
    const box = document.getElementById("page-error");
    if (box) {
      box.textContent = "Something went wrong on this page: " + message;
      box.hidden = false;
    }
  }
  window.addEventListener("error", (e) => pageError(e.message || "script error"));
  window.addEventListener("unhandledrejection", (e) =>
    pageError((e.reason && e.reason.message) || String(e.reason)));

  // --- DOM helpers --------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function status(outcome, word) {
    const o = OUTCOMES[outcome] || OUTCOMES["could-not-decide"];
    return el("span", { class: "status " + (OUTCOMES[outcome] ? outcome : "could-not-decide") },
      el("span", { "aria-hidden": "true" }, o.symbol), " ", word || o.word);
  }

  // "2026-11-23 10:00 UTC": the same on every machine, unambiguous.
  function when(iso) {
    if (!iso) return el("span", {}, "never");
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return el("span", {}, iso);
    const text = d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
    return el("time", { datetime: iso }, text);
  }

  function notice(text, kind) {
    return el("p", { class: "notice" + (kind ? " " + kind : ""), role: kind ? null : "alert" }, text);
  }

  // --- XRPC ---------------------------------------------------------------------------------

  // Resolves to {ok, status, body, retryAfter}; network failures become an XRPC-shaped error.
  async function xrpc(method, params, post) {
    let url = XRPC + method;
    const init = { headers: { "Accept": "application/json" } };
    if (post) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(params);
    } else if (params) {
      url += "?" + params.toString();
    }
    let resp;
    try {
      resp = await fetch(url, init);
    } catch (e) {
      return { ok: false, status: 0, body: { error: "NetworkError", message: "the labeler could not be reached" } };
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = { error: "BadResponse", message: "the labeler answered " + resp.status + " without JSON" };
    }
    return { ok: resp.ok, status: resp.status, body, retryAfter: resp.headers.get("Retry-After") };
  }

  function errorText(r) {
    const m = (r.body && (r.body.message || r.body.error)) || ("HTTP " + r.status);
    return m;
  }

  // --- The labeler itself -------------------------------------------------------------------

  async function describeLabeler() {
    const r = await xrpc("describeLabeler");
    const did = document.getElementById("labeler-did");
    const key = document.getElementById("labeler-key");
    const values = document.getElementById("labeler-values");
    if (!r.ok) {
      did.textContent = "unknown (" + errorText(r) + ")";
      key.textContent = "unknown";
      return;
    }
    did.textContent = r.body.did || "not configured";
    key.textContent = r.body.signingKey || "none";
    values.replaceChildren(...(r.body.labelValues || []).map((v) =>
      el("li", {}, el("code", {}, v.identifier), " \u2014 ", el("strong", {}, v.name || ""), ". ",
        v.description || "")));
  }

  // --- Reports ------------------------------------------------------------------------------

  function fixBlock(fix) {
    const record = fix.type === "TXT"
      ? fix.name + " TXT " + JSON.stringify(fix.value)
      : fix.name + " " + fix.type + " " + fix.value;
    return el("div", { class: "fix" },
      el("p", {}, el("strong", {}, "How to fix: "), "publish this record"),
      el("p", {}, el("code", { class: "record" }, record)),
      fix.note ? el("p", { class: "note" }, fix.note) : null);
  }

  function checkItem(c) {
    const name = (CHECK_NAMES[c.name] || c.name) + (c.subject ? " (selector " + c.subject + ")" : "");
    return el("li", { class: "check " + c.outcome, "data-check": c.name, "data-outcome": c.outcome },
      status(c.outcome),
      el("span", { class: "name" }, name),
      el("p", { class: "reason" }, c.reason),
      c.fix && c.outcome === "fail" ? fixBlock(c.fix) : null);
  }

  function checkList(checks) {
    if (!checks || checks.length === 0) {
      return el("p", {}, "Not checked yet.");
    }
    return el("ul", { class: "checks" }, checks.map(checkItem));
  }

  function attestationView(a) {
    const history = a.history || [];
    return el("section", { class: "attestation", "data-domain": a.domain },
      el("h4", {}, a.domain, " ", status(a.verdict)),
      el("p", { class: "meta" },
        "Checked ", when(a.checkedAt), "; next check ", when(a.nextCheckAt), ". ",
        a.verified ? "This attestation counts: it verifies the account." : "This attestation does not count now.",
        " DKIM selectors: ", (a.dkimSelectors || []).join(", "), "."),
      el("p", { class: "meta mono" }, a.uri),
      a.confirmedBy ? el("p", { class: "meta" }, "Failure confirmed through " + a.confirmedBy + ".") : null,
      (a.notes || []).map((n) => el("p", { class: "meta" }, n)),
      checkList(a.checks),
      history.length ? el("h5", {}, "Verdict changes, newest first") : null,
      history.length ? el("ol", { class: "history" }, history.map((h) =>
        el("li", {}, when(h.at), " ", status(h.verdict), h.summary ? " \u2014 " + h.summary : ""))) : null);
  }

  function labelList(labels) {
    if (!labels || labels.length === 0) {
      return el("p", { class: "labels-none" }, "No labels from this labeler.");
    }
    return el("ul", { class: "labels" }, labels.map((l) =>
      el("li", { class: l.neg ? "neg" : "held", "data-val": l.val, "data-neg": l.neg ? "true" : "false" },
        el("code", {}, l.val),
        l.neg ? " withdrawn " : " since ", when(l.cts),
        l.exp ? el("span", {}, ", expires ", when(l.exp)) : ", no expiry")));
  }

  // The part of a subject that a re-check changes.
  function subjectBody(v) {
    const held = (v.labels || []).some((l) => !l.neg && l.val === "verified-mail-operator");
    return el("div", { class: "subject-body" },
      el("p", { class: "standing" }, held
        ? status("pass", "verified mail operator")
        : status("fail", "not verified")),
      el("h4", {}, "Labels held"),
      labelList(v.labels),
      (v.attestations || []).length === 0
        ? el("p", {}, "The labeler holds no attestation for this account.")
        : (v.attestations || []).map(attestationView),
      (v.refused || []).length ? el("h4", {}, "Attestations refused") : null,
      (v.refused || []).map((r) => el("p", { class: "meta" }, r.uri + ": " + r.reason)));
  }

  function subjectView(v, foundBy) {
    const body = subjectBody(v);
    const button = el("button", { type: "button", class: "recheck" }, "Check again now");
    const said = el("p", { class: "recheck-status", role: "status" });
    const article = el("article", { class: "subject", "data-did": v.did },
      el("h3", {}, v.did),
      foundBy ? el("p", { class: "found-by" }, foundBy) : null,
      el("div", { class: "actions" }, button, said),
      body);
    button.addEventListener("click", () => recheck(v.did, article, button, said));
    return article;
  }

  // --- Check again now ----------------------------------------------------------------------

  function checkedStamps(v) {
    return (v.attestations || []).map((a) => a.uri + "@" + (a.checkedAt || ""));
  }

  async function recheck(did, article, button, said) {
    button.disabled = true;
    said.textContent = "Asking the labeler\u2026";
    const before = await xrpc("getVerification", new URLSearchParams({ did }));
    const r = await xrpc("requestVerification", { did }, true);
    if (!r.ok) {
      button.disabled = false;
      said.textContent = r.status === 429
        ? "Not now: " + errorText(r) + "."
        : "The labeler refused: " + errorText(r) + ".";
      return;
    }
    said.textContent = "Checking " + r.body.attestations + " attestation(s) again\u2026 this page updates by itself.";
    const old = before.ok ? checkedStamps(before.body) : [];
    for (let i = 0; i < POLL_TIMES; i++) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      const now = await xrpc("getVerification", new URLSearchParams({ did }));
      if (!now.ok) continue;
      const stamps = checkedStamps(now.body);
      const done = stamps.length > 0 && stamps.every((s) => !old.includes(s));
      if (done) {
        article.querySelector(".subject-body").replaceWith(subjectBody(now.body));
        said.textContent = "Checked again just now.";
        button.disabled = false;
        return;
      }
    }
    said.textContent = "No new result yet; the check may still be running. Look up the operator again in a minute.";
    button.disabled = false;
  }

  // --- Lookup -------------------------------------------------------------------------------

  function foundByText(v) {
    const how = (v.foundBy || []).map((b) =>
      b === "handle" ? "handle (" + v.handle + ")" : b === "domain" ? "mail domain" : "DID");
    return how.length ? "Found by " + how.join(" and by ") + "." : null;
  }

  async function lookup(raw) {
    const results = document.getElementById("results");
    const q = raw.trim();
    if (!q) {
      results.replaceChildren();
      return;
    }
    results.replaceChildren(el("p", { class: "notice info" }, "Looking up " + q + "\u2026"));
    const r = await xrpc("getVerification", new URLSearchParams({ q }));
    if (!r.ok) {
      results.replaceChildren(notice("Cannot look up " + q + ": " + errorText(r) + "."));
      return;
    }
    const operators = r.body.operators || [];
    if (operators.length === 0) {
      results.replaceChildren(el("div", { class: "notice", role: "alert" },
        el("p", {}, "Nothing found for " + q + "."),
        (r.body.notes || []).map((n) => el("p", {}, n))));
      return;
    }
    results.replaceChildren(...operators.map((v) => subjectView(v, foundByText(v))));
  }

  // --- Before you publish -------------------------------------------------------------------

  async function preflight(form) {
    const out = document.getElementById("preflight-result");
    const button = document.getElementById("pf-run");
    const domain = form.elements["domain"].value.trim();
    const did = form.elements["did"].value.trim();
    const selectors = form.elements["selectors"].value.split(/[\s,]+/).filter((s) => s.length > 0);
    const params = new URLSearchParams({ domain, did });
    for (const s of selectors) params.append("selector", s);
    button.disabled = true;
    out.replaceChildren(el("p", { class: "notice info" }, "Checking " + domain + "\u2026"));
    const r = await xrpc("checkDomain", params);
    button.disabled = false;
    if (!r.ok) {
      out.replaceChildren(notice(r.status === 429 || r.status === 503
        ? "Not now: " + errorText(r) + "."
        : "Cannot check: " + errorText(r) + "."));
      return;
    }
    const v = r.body;
    out.replaceChildren(el("div", { class: "report" },
      el("h3", {}, v.domain, " ", status(v.verdict)),
      el("p", { class: "meta" }, "Checked ", when(v.checkedAt), " for ", v.did, ". ",
        v.verdict === "pass"
          ? "Every check passes: publish the record below and the label follows within seconds."
          : "Fix what fails, then run the checks again."),
      checkList(v.checks),
      el("h4", {}, "The attestation record to publish"),
      el("p", {}, "In the repository of ", el("code", {}, v.did), ", collection ",
        el("code", {}, "email.atmos.attestation"), ", any record key:"),
      el("pre", { class: "attestation-record" }, JSON.stringify(v.record, null, 2))));
  }

  // --- Wiring -------------------------------------------------------------------------------

  function start() {
    const form = document.getElementById("search");
    const input = document.getElementById("q");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const q = input.value.trim();
      const url = q ? "/?q=" + encodeURIComponent(q) : "/";
      if (location.pathname + location.search !== url) history.pushState({ q }, "", url);
      lookup(q);
    });
    window.addEventListener("popstate", () => {
      const q = new URLSearchParams(location.search).get("q") || "";
      input.value = q;
      lookup(q);
    });
    const pf = document.getElementById("preflight-form");
    pf.addEventListener("submit", (e) => {
      e.preventDefault();
      preflight(pf);
    });
    describeLabeler();
    const q = new URLSearchParams(location.search).get("q");
    if (q) {
      input.value = q;
      lookup(q);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
