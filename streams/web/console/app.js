// procwarden console: plain JavaScript over the public REST API, nothing else.
"use strict";

const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const MODES = ["Discover", "Monitor", "Protect"];
const BASELINES = ["zero-drift", "basic"];
const CRITERIA_KEYS = ["namespace", "service", "image", "container", "label", "node"];
const CRITERIA_OPS = ["=", "!=", "contains", "prefix", "regex", "!regex"];
let refreshTimer = null;

// ---- helpers ----------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) : "";
}

class ApiFailure extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.field = body && body.field;
  }
}

async function api(method, path, body) {
  const headers = {"Content-Type": "application/json"};
  const token = sessionStorage.getItem("procwarden-token");
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await resp.json().catch(() => null);
  if (resp.status === 401 || resp.status === 403) {
    showSignIn(data && data.message);
    throw new ApiFailure(resp.status, data);
  }
  if (!resp.ok) throw new ApiFailure(resp.status, data);
  return data;
}

function table(headers, rows, onRow) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map(h => el("th", {scope: "col"}, h)))),
    el("tbody", {}, rows.map((cells, i) => {
      const attrs = onRow ? {class: "clickable", tabindex: "0", onclick: () => onRow(i),
                             onkeydown: e => { if (e.key === "Enter") onRow(i); }} : {};
      return el("tr", attrs, cells.map(c => el("td", {}, c)));
    })));
}

function labelled(text, control, errorId) {
  return el("label", {}, text, control, errorId ? el("span", {class: "field-error", id: errorId}) : null);
}

function select(name, options, value) {
  return el("select", {name, id: name}, options.map(o => el("option", {value: o, selected: o === value}, o)));
}

function showFieldError(form, failure) {
  form.querySelectorAll(".field-error").forEach(s => { s.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach(c => c.removeAttribute("aria-invalid"));
  const leaf = (failure.field || "").split(".").pop().replace(/\[\d+\]$/, "");
  const control = leaf && form.querySelector(`[name="${leaf}"]`);
  if (control) {
    control.setAttribute("aria-invalid", "true");
    const holder = form.querySelector(`#${form.id}-${leaf}-error`);
    if (holder) holder.textContent = failure.message;
    control.focus();
  }
  say(failure.message, true);
}

// ---- sign-in ----------------------------------------------------------------------------------

function showSignIn(reason) {
  stopRefresh();
  document.getElementById("signout").hidden = true;
  main.replaceChildren(
    el("h2", {}, "Sign in"),
    el("p", {}, reason || "This deployment needs the API token to read."),
    el("form", {class: "inline", id: "signin", onsubmit: e => {
      e.preventDefault();
      sessionStorage.setItem("procwarden-token", e.target.elements.token.value.trim());
      location.hash = "#/groups";
      route();
    }}, labelled("API token", el("input", {name: "token", type: "password", required: true,
                                            autocomplete: "current-password"})),
        el("button", {type: "submit"}, "Sign in")));
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem("procwarden-token");
  showSignIn("Signed out.");
});

// ---- Groups -----------------------------------------------------------------------------------

async function groupsPage() {
  const [{groups}, {workloads}] = await Promise.all([api("GET", "/v1/group"), api("GET", "/v1/workload")]);
  const members = {};
  for (const w of workloads) {
    for (const g of [w.group, ...w.custom_groups]) (members[g] = members[g] || []).push(w);
  }
  const rows = groups.map(g => {
    const box = el("input", {type: "checkbox", name: "pick", value: g.name, disabled: g.kind === "custom",
                             "aria-label": `select ${g.name}`});
    const who = (members[g.name] || []).map(w => el("a", {href: `#/workload/${encodeURIComponent(w.id)}`},
                                                      `${w.name}${w.namespace ? "." + w.namespace : ""}`));
    return [box, el("a", {href: `#/group/${encodeURIComponent(g.name)}`}, g.name), g.kind,
            g.mode || "—", g.baseline || "—", who.length ? who.flatMap((a, i) => i ? [", ", a] : [a]) : "none",
            String(g.rules), g.kind === "custom" ? el("button", {type: "button", onclick: () => fillGroupForm(g)}, "Edit criteria") : ""];
  });
  const bulk = el("form", {class: "inline", id: "bulk", onsubmit: async e => {
    e.preventDefault();
    const picked = [...main.querySelectorAll('input[name="pick"]:checked')].map(b => b.value);
    if (!picked.length) { say("Select at least one group.", true); return; }
    const config = {services: picked.map(n => n === "nodes" ? n : n.replace(/^nv\./, ""))};
    if (e.target.elements.mode.value) config.profile_mode = e.target.elements.mode.value;
    if (e.target.elements.baseline.value) config.baseline_profile = e.target.elements.baseline.value;
    try {
      await api("PATCH", "/v1/service/config", {config});
      say(`Updated ${picked.join(", ")}.`);
      await route();
    } catch (failure) { say(failure.message, true); }
  }},
    labelled("Mode", select("mode", ["", ...MODES], "")),
    labelled("Baseline", select("baseline", ["", ...BASELINES], "")),
    el("button", {type: "submit"}, "Apply to selected groups"));
  main.replaceChildren(
    el("h2", {}, "Groups"),
    el("p", {class: "muted"}, "Select learned groups (or nodes) to switch their mode or baseline together."),
    bulk,
    table(["", "Group", "Kind", "Mode", "Baseline", "Members", "Rules", ""], rows),
    el("h3", {}, "Custom group"),
    groupForm());
}

function criterionRow(c = {key: "namespace", op: "=", value: ""}) {
  return el("div", {class: "criterion"},
    labelled("Key", el("select", {name: "key"}, CRITERIA_KEYS.map(k => el("option", {value: k, selected: k === c.key}, k)))),
    labelled("Op", el("select", {name: "op"}, CRITERIA_OPS.map(o => el("option", {value: o, selected: o === c.op}, o)))),
    labelled("Value", el("input", {name: "value", value: c.value, required: true})));
}

function groupForm() {
  const criteria = el("div", {id: "criteria"}, criterionRow());
  return el("form", {class: "inline", id: "group", onsubmit: async e => {
    e.preventDefault();
    const form = e.target;
    const name = form.elements.name.value.trim();
    const rows = [...form.querySelectorAll(".criterion")].map(r => ({
      key: r.querySelector('[name="key"]').value, op: r.querySelector('[name="op"]').value,
      value: r.querySelector('[name="value"]').value}));
    const existing = form.dataset.editing === name;
    try {
      await api(existing ? "PATCH" : "POST", existing ? `/v1/group/${encodeURIComponent(name)}` : "/v1/group",
                {config: {name, criteria: rows}});
      say(`Saved custom group ${name}.`);
      await route();
    } catch (failure) { showFieldError(form, failure); }
  }},
    labelled("Name", el("input", {name: "name", required: true}), "group-name-error"),
    criteria,
    el("button", {type: "button", onclick: () => criteria.append(criterionRow())}, "Add criterion (+)"),
    el("button", {type: "submit"}, "Save custom group"));
}

function fillGroupForm(g) {
  const form = document.getElementById("group");
  form.elements.name.value = g.name;
  form.dataset.editing = g.name;
  const criteria = form.querySelector("#criteria");
  criteria.replaceChildren(...(g.criteria.length ? g.criteria : [undefined]).map(c => criterionRow(c)));
  form.elements.name.focus();
}

// ---- Process Profile Rules of a group ---------------------------------------------------------

async function rulesPage(group) {
  const {process_profile: p} = await api("GET", `/v1/process_profile/${encodeURIComponent(group)}`);
  const rows = p.process_list.map((r, i) => [
    String(i + 1), el("span", {class: `verdict-${r.action === "deny" ? "block" : "allow"}`}, r.action),
    el("code", {}, r.name), el("code", {}, r.path || '""'), r.cfg_type, (r.users || []).join(", "),
    when(r.created_timestamp), r.learned_from ? el("code", {}, r.learned_from) : "",
    r.group !== group ? r.group : "",
    el("span", {}, el("button", {type: "button", onclick: () => editRule(r)}, "Edit"), " ",
       el("button", {type: "button", onclick: () => deleteRule(group, r)}, "Delete"))]);
  main.replaceChildren(
    el("p", {}, el("a", {href: "#/groups"}, "← Groups")),
    el("h2", {}, `Process Profile Rules: ${group}`),
    el("p", {class: "muted"}, p.mode ? `Mode ${p.mode}, baseline ${p.baseline}, version ${p.version}. `
      : `Custom group, version ${p.version}. `, "Rules are listed in the order they are matched."),
    table(["#", "Action", "Name", "Path", "Source", "Users", "First seen", "Learned from", "", ""], rows),
    el("h3", {}, "Add rule (+)"),
    ruleForm(group));
}

function ruleForm(group) {
  return el("form", {class: "inline", id: "rule", onsubmit: async e => {
    e.preventDefault();
    const form = e.target;
    const change = {name: form.elements.name.value, path: form.elements.path.value, action: form.elements.action.value,
                    allow_update: form.elements.allow_update.checked};
    const config = {process_change_list: [change]};
    const old = form.dataset.editing ? JSON.parse(form.dataset.editing) : null;
    if (old && (old.name !== change.name || old.path !== change.path)) {
      config.process_delete_list = [{name: old.name, path: old.path}];
    }
    try {
      await api("PATCH", `/v1/process_profile/${encodeURIComponent(group)}`, {process_profile_config: config});
      say(`Saved rule ${change.name} ${change.path} (${change.action}).`);
      await route();
    } catch (failure) { showFieldError(form, failure); }
  }},
    labelled("Name", el("input", {name: "name", required: true, placeholder: "curl or *"}), "rule-name-error"),
    labelled("Path", el("input", {name: "path", placeholder: "/usr/bin/curl"}), "rule-path-error"),
    labelled("Action", select("action", ["allow", "deny"], "allow"), "rule-action-error"),
    labelled("Allow update", el("input", {name: "allow_update", type: "checkbox"})),
    el("button", {type: "submit"}, "Save rule"));
}

function editRule(r) {
  const form = document.getElementById("rule");
  form.elements.name.value = r.name;
  form.elements.path.value = r.path;
  form.elements.action.value = r.action;
  form.elements.allow_update.checked = !!r.allow_update;
  form.dataset.editing = JSON.stringify({name: r.name, path: r.path});
  form.elements.name.focus();
}

async function deleteRule(group, r) {
  try {
    await api("PATCH", `/v1/process_profile/${encodeURIComponent(group)}`,
              {process_profile_config: {process_delete_list: [{name: r.name, path: r.path}]}});
    say(`Deleted rule ${r.name} ${r.path}.`);
    await route();
  } catch (failure) { say(failure.message, true); }
}

// ---- a workload's effective list --------------------------------------------------------------

async function workloadPage(id) {
  const {process_profile: p} = await api("GET", `/v1/workload/${encodeURIComponent(id)}/process_profile`);
  main.replaceChildren(
    el("p", {}, el("a", {href: "#/groups"}, "← Groups")),
    el("h2", {}, `Effective rules of ${id}`),
    el("p", {class: "muted"}, `Learned group ${p.group} (${p.mode}, ${p.baseline})`,
       p.custom_groups.length ? `; custom groups ${p.custom_groups.join(", ")}` : "", "."),
    table(["#", "Action", "Name", "Path", "Source", "From group"], p.process_list.map((r, i) => [
      String(i + 1), r.action, el("code", {}, r.name), el("code", {}, r.path || '""'), r.cfg_type,
      el("a", {href: `#/group/${encodeURIComponent(r.group)}`}, r.group)])));
}

// ---- Security Events --------------------------------------------------------------------------

const eventFilters = {group: "", workload: "", name: "", action: "", minutes: "1440"};

async function eventsPage() {
  const form = el("form", {class: "inline", id: "filters", onsubmit: e => {
    e.preventDefault();
    for (const key of Object.keys(eventFilters)) eventFilters[key] = e.target.elements[key].value.trim();
    loadEvents();
  }},
    labelled("Group", el("input", {name: "group", value: eventFilters.group})),
    labelled("Workload", el("input", {name: "workload", value: eventFilters.workload})),
    labelled("Incident", el("input", {name: "name", value: eventFilters.name, placeholder: "Process.Profile.Violation"})),
    labelled("Action", select("action", ["", "violate", "deny"], eventFilters.action)),
    labelled("Since", el("select", {name: "minutes"}, [["15", "15 minutes"], ["60", "1 hour"], ["1440", "1 day"], ["10080", "7 days"]]
      .map(([v, t]) => el("option", {value: v, selected: v === eventFilters.minutes}, t)))),
    el("button", {type: "submit"}, "Filter"));
  main.replaceChildren(el("h2", {}, "Security Events"),
                       el("p", {class: "muted"}, "Newest first; updates every 3 seconds while open."),
                       form, el("div", {id: "events"}), el("div", {id: "incident"}));
  await loadEvents();
  refreshTimer = setInterval(() => loadEvents().catch(() => {}), 3000);
}

async function loadEvents() {
  const params = new URLSearchParams({limit: "200", since: String(Math.floor(Date.now() / 1000) - 60 * Number(eventFilters.minutes))});
  for (const key of ["group", "workload", "name", "action"]) if (eventFilters[key]) params.set(key, eventFilters[key]);
  const {security_events: found} = await api("GET", `/v1/security_events?${params}`);
  const holder = document.getElementById("events");
  if (!holder) return;
  holder.replaceChildren(found.length ? table(
    ["Time", "Incident", "Level", "Group", "Workload", "Process", "Action", "Message"],
    found.map(i => [when(i.reported_timestamp), i.name, i.level, i.group_name, i.workload_name,
                    el("code", {}, i.proc_path || i.proc_name), el("span", {class: `action-${i.action}`}, i.action),
                    i.message]),
    idx => showIncident(found[idx])) : el("p", {}, "No security events match."));
}

function showIncident(incident) {
  const holder = document.getElementById("incident");
  holder.replaceChildren(el("h3", {}, `${incident.name} (${incident.id})`),
    el("dl", {class: "details"}, Object.entries(incident).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {class: "mono"}, String(v))])));
  holder.scrollIntoView({block: "nearest"});
}

// ---- Dry run ----------------------------------------------------------------------------------

async function dryRunPage() {
  const {workloads} = await api("GET", "/v1/workload");
  const result = el("div", {id: "dry-run-result", "aria-live": "polite"});
  main.replaceChildren(el("h2", {}, "Dry run"),
    el("p", {class: "muted"}, "What would the engine decide for this exec, against the current policies? Nothing is learned."),
    el("form", {class: "inline", id: "dry", onsubmit: async e => {
      e.preventDefault();
      const f = e.target;
      const name = f.elements.name.value.trim() || f.elements.path.value.split("/").pop();
      const event = {schema_version: 1, event_id: `console-${Date.now()}`, node: "console", cluster: "default",
                     ts: Date.now() / 1000, kind: "exec",
                     payload: {workload_id: f.elements.workload.value, pid: 1, path: f.elements.path.value, name, argv: [name],
                               user: f.elements.user.value || "root"}};
      try {
        const {decision: d} = await api("POST", "/v1/dry-run", {event});
        result.replaceChildren(el("dl", {class: "details"},
          el("dt", {}, "verdict"), el("dd", {class: `verdict-${d.verdict}`}, d.verdict),
          el("dt", {}, "reason"), el("dd", {class: "mono"}, d.reason),
          el("dt", {}, "group"), el("dd", {}, d.group),
          el("dt", {}, "mode / baseline"), el("dd", {}, `${d.mode} / ${d.baseline}`),
          el("dt", {}, "rule"), el("dd", {class: "mono"}, d.rule_uuid ? `${d.rule_uuid} (${d.rule_group})` : "none"),
          el("dt", {}, "incident"), el("dd", {}, d.incident ? `${d.incident.name}: ${d.incident.message}` : "none")));
        say("");
      } catch (failure) { showFieldError(f, failure); }
    }},
      labelled("Workload", el("select", {name: "workload", required: true},
        workloads.map(w => el("option", {value: w.id}, `${w.name}${w.namespace ? "." + w.namespace : ""} (${w.group})`)))),
      labelled("Name", el("input", {name: "name", placeholder: "from the path"})),
      labelled("Path", el("input", {name: "path", required: true, placeholder: "/usr/bin/curl"})),
      labelled("User", el("input", {name: "user", placeholder: "root"})),
      el("button", {type: "submit"}, "Decide")),
    result);
}

// ---- routing ----------------------------------------------------------------------------------

function stopRefresh() {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
}

async function route() {
  stopRefresh();
  const [page, arg] = location.hash.replace(/^#\//, "").split("/").map(decodeURIComponent);
  document.querySelectorAll("nav a").forEach(a => {
    if (a.dataset.page === (page || "groups") || (page === "group" && a.dataset.page === "groups")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  document.getElementById("signout").hidden = !sessionStorage.getItem("procwarden-token");
  try {
    if (page === "group" && arg) await rulesPage(arg);
    else if (page === "workload" && arg) await workloadPage(arg);
    else if (page === "events") await eventsPage();
    else if (page === "dry-run") await dryRunPage();
    else await groupsPage();
  } catch (failure) {
    if (failure.status !== 401 && failure.status !== 403) say(failure.message, true);
  }
}

window.addEventListener("hashchange", () => { say(""); route(); });
route();
