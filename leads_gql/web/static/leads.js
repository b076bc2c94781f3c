// The leads page: a chat flow's leads, newest first, through the public GraphQL
// API (the `leads` connection, `leadCreated`, `deleteLead`) and the CSV export.
//
// Rules kept throughout: text from a lead is only ever set as text (textContent,
// never innerHTML); the token lives in this tab's sessionStorage (or in memory),
// never in a URL or a cookie; the server decides what a token may do, the page
// only reads the token's claims to choose what to show.
"use strict";

(function () {
  const TOKEN_KEY = "leads-gql.token";
  const FLOW_KEY = "leads-gql.chatflow";
  const SIZE_KEY = "leads-gql.page-size";
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const LEAD_FIELDS = "id name email phone chatflowid chatId createdDate";
  const PAGE_QUERY = `query LeadsPage($chatflowid: ID!, $first: Int, $after: String,
  $last: Int, $before: String, $search: String, $createdAfter: DateTime,
  $createdBefore: DateTime) {
  leads(chatflowid: $chatflowid, first: $first, after: $after, last: $last,
        before: $before, search: $search, createdAfter: $createdAfter,
        createdBefore: $createdBefore, orderBy: NEWEST_FIRST) {
    totalCount
    edges { cursor node { ${LEAD_FIELDS} } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}`;
  const DELETE_MUTATION = `mutation DeleteLead($id: ID!) {
  deleteLead(id: $id) { id }
}`;
  const LIVE_SUBSCRIPTION = `subscription LeadCreated($chatflowid: ID!) {
  leadCreated(chatflowid: $chatflowid) { ${LEAD_FIELDS} }
}`;

  const $ = (id) => document.getElementById(id);
  const ui = {
    intro: $("intro"),
    tokenForm: $("token-form"),
    token: $("token"),
    tokenError: $("token-error"),
    identity: $("identity"),
    identityText: $("identity-text"),
    changeToken: $("change-token"),
    forgetToken: $("forget-token"),
    browser: $("browser"),
    title: $("leads-title"),
    filters: $("filters"),
    flow: $("flow"),
    flowChoices: $("flow-choices"),
    flowError: $("flow-error"),
    search: $("search"),
    from: $("from"),
    to: $("to"),
    clearFilters: $("clear-filters"),
    summary: $("summary"),
    message: $("message"),
    live: $("live"),
    liveText: $("live-text"),
    exportButton: $("export"),
    notice: $("notice"),
    noticeText: $("notice-text"),
    retry: $("retry"),
    fresh: $("fresh"),
    showNewest: $("show-newest"),
    table: $("leads"),
    tableWrap: $("table-wrap"),
    rows: $("rows"),
    actionsHeader: document.querySelector("th.col-actions"),
    empty: $("empty"),
    emptyText: $("empty-text"),
    newer: $("newer"),
    older: $("older"),
    pageSize: $("page-size"),
    confirm: $("confirm"),
    confirmText: $("confirm-text"),
    confirmCancel: $("confirm-cancel"),
    confirmDelete: $("confirm-delete"),
  };

  // sessionStorage when the browser allows it, else this page's memory.
  const memory = new Map();
  const session = {
    get(key) {
      try {
        return window.sessionStorage.getItem(key);
      } catch (error) {
        return memory.has(key) ? memory.get(key) : null;
      }
    },
    set(key, value) {
      try {
        window.sessionStorage.setItem(key, value);
      } catch (error) {
        memory.set(key, value);
      }
    },
    remove(key) {
      memory.delete(key);
      try {
        window.sessionStorage.removeItem(key);
      } catch (error) {
        // nothing kept there
      }
    },
  };

  const state = {
    token: null,
    claims: null,
    flow: null,
    search: "",
    from: "",
    to: "",
    size: 50,
    // The arguments that made the page shown: {after} or {before} or neither.
    position: {},
    offset: 0, // how many leads (within the filters) come before the first row
    edges: [],
    pageInfo: null,
    totalCount: 0,
    loading: 0, // the number of the latest load; older answers are dropped
    busy: null, // the position being loaded, if any
    resync: false, // load the first page again once the current load is in
    unseen: 0, // leads that arrived while an older page was shown
    live: null,
  };

  // ---- small helpers -------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(typeof child === "string" ? document.createTextNode(child) : child);
      }
    }
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  const dayTime = new Intl.DateTimeFormat(undefined, {
    day: "numeric",
    month: "short",
    year: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
  const timeOnly = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit",
    minute: "2-digit",
  });

  function sameDay(a, b) {
    return (
      a.getFullYear() === b.getFullYear() &&
      a.getMonth() === b.getMonth() &&
      a.getDate() === b.getDate()
    );
  }

  function when(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    return sameDay(date, new Date()) ? `Today, ${timeOnly.format(date)}` : dayTime.format(date);
  }

  function plural(count, one, many) {
    return `${count.toLocaleString()} ${count === 1 ? one : many}`;
  }

  function describe(lead) {
    return lead.name || lead.email || lead.phone || lead.id;
  }

  function at(date) {
    return sameDay(date, new Date())
      ? `at ${timeOnly.format(date)}`
      : `on ${dayTime.format(date)}`;
  }

  // A passing word on what just happened ("Deleted …"), read out by screen readers.
  let messageTimer = null;

  function say(text) {
    clearTimeout(messageTimer);
    ui.message.textContent = text;
    messageTimer = setTimeout(() => {
      ui.message.textContent = "";
    }, 8000);
  }

  // ---- the token -----------------------------------------------------------

  // The claims, read for display only: the server checks the signature.
  function readClaims(token) {
    const parts = token.split(".");
    if (parts.length !== 3) return null;
    try {
      let base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      base64 += "=".repeat((4 - (base64.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" ? claims : null;
    } catch (error) {
      return null;
    }
  }

  function scopes() {
    const scope = state.claims && state.claims.scope;
    return typeof scope === "string" ? scope.split(" ").filter(Boolean) : [];
  }

  function mayDelete() {
    return scopes().includes("leads:delete");
  }

  function expiry() {
    const exp = state.claims && Number(state.claims.exp);
    return exp ? new Date(exp * 1000) : null;
  }

  function setToken(raw) {
    const token = raw.trim().replace(/^bearer\s+/i, "");
    const claims = readClaims(token);
    if (!token) return "Paste a token first.";
    if (!claims) {
      return "This is not a token: a token (a JWT) is three parts separated by dots.";
    }
    const exp = Number(claims.exp);
    if (exp && exp * 1000 <= Date.now()) {
      return `Your token expired ${at(new Date(exp * 1000))}. Paste a new one to go on.`;
    }
    stopLive(); // a socket carries the token it was opened with
    state.token = token;
    state.claims = claims;
    state.edges = [];
    session.set(TOKEN_KEY, token);
    return null;
  }

  function forgetToken(message) {
    stopLive();
    state.token = null;
    state.claims = null;
    session.remove(TOKEN_KEY);
    ui.token.value = "";
    renderAccess(message);
  }

  function renderAccess(message) {
    const signedIn = state.token !== null;
    show(ui.tokenForm, !signedIn);
    show(ui.intro, !signedIn);
    show(ui.identity, signedIn);
    show(ui.browser, signedIn);
    ui.tokenError.textContent = message || "";
    show(ui.tokenError, Boolean(message));
    ui.token.setAttribute("aria-invalid", message ? "true" : "false");
    if (!signedIn) return;

    const subject = state.claims.sub ? String(state.claims.sub) : "an unnamed subject";
    const granted = scopes().filter((s) => s.startsWith("leads:"));
    const parts = [el("span", { text: "Token for " }), el("strong", { text: subject })];
    if (granted.length) {
      parts.push(el("span", { text: " · " }));
      for (const scope of granted) {
        parts.push(el("span", { className: "badge", text: scope.replace("leads:", "") }));
      }
    } else {
      parts.push(el("span", { text: " · no leads scope: it can read nothing" }));
    }
    const exp = expiry();
    if (exp) {
      const past = exp.getTime() <= Date.now();
      parts.push(el("span", { text: ` · ${past ? "expired" : "expires"} ${at(exp)}` }));
    }
    ui.identityText.replaceChildren(...parts);

    const flows = Array.isArray(state.claims.chatflows) ? state.claims.chatflows : [];
    ui.flowChoices.replaceChildren(...flows.map((f) => el("option", { value: String(f) })));
    if (!ui.flow.value && flows.length === 1) ui.flow.value = String(flows[0]);
    show(ui.actionsHeader, mayDelete());
    if (!state.flow) {
      ui.summary.textContent = "";
      ui.exportButton.disabled = true;
      showEmpty("Enter the id of a chat flow to see its leads, newest first.");
    }
  }

  function tokenRefused() {
    if (!state.token) return; // told already (by the socket, or another request)
    const exp = expiry();
    const expired = exp && exp.getTime() <= Date.now();
    const message = expired
      ? `Your token expired ${at(exp)}. Paste a new one to go on.`
      : "The server refused this token: it may be malformed, signed with another " +
        "key, or expired. Paste a new one to go on.";
    forgetToken(message);
    ui.token.focus();
  }

  // ---- talking to the server -----------------------------------------------

  class Refused extends Error {}
  class Failed extends Error {
    constructor(message, { code = null, retry = true } = {}) {
      super(message);
      this.code = code;
      this.retry = retry;
    }
  }

  function authorization() {
    return { Authorization: `Bearer ${state.token}` };
  }

  async function request(url, options) {
    let response;
    try {
      response = await fetch(url, { ...options, cache: "no-store", credentials: "omit" });
    } catch (error) {
      throw new Failed("The server cannot be reached. Check the connection and try again.");
    }
    if (response.status === 401) throw new Refused();
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After");
      throw new Failed(`Too many requests: try again${wait ? ` in ${wait} s` : " shortly"}.`);
    }
    if (response.status >= 500) {
      throw new Failed("The server could not answer just now. Try again in a moment.");
    }
    return response;
  }

  async function graphql(query, variables) {
    const response = await request("/graphql", {
      method: "POST",
      headers: {
        ...authorization(),
        "Content-Type": "application/json",
        Accept: "application/graphql-response+json, application/json",
      },
      body: JSON.stringify({ query, variables }),
    });
    let body;
    try {
      body = await response.json();
    } catch (error) {
      throw new Failed(`The server gave an answer this page cannot read (${response.status}).`);
    }
    const errors = Array.isArray(body.errors) ? body.errors : [];
    if (errors.length) {
      const first = errors[0];
      const code = (first.extensions && first.extensions.code) || null;
      if (code === "UNAUTHENTICATED") throw new Refused();
      throw new Failed(String(first.message || "The request failed."), {
        code,
        retry: code !== "FORBIDDEN" && code !== "BAD_USER_INPUT",
      });
    }
    if (!response.ok || !body.data) {
      throw new Failed(`The request failed (${response.status}).`);
    }
    return body.data;
  }

  // ---- filters and the page ------------------------------------------------

  function localMidnight(dateText) {
    const [year, month, day] = dateText.split("-").map(Number);
    return new Date(year, month - 1, day);
  }

  function bounds() {
    const after = state.from ? localMidnight(state.from) : null;
    let before = null;
    if (state.to) {
      before = localMidnight(state.to);
      before.setDate(before.getDate() + 1); // the whole of the last day
    }
    return { after, before };
  }

  function filtered() {
    return Boolean(state.search || state.from || state.to);
  }

  function variables(position) {
    const vars = { chatflowid: state.flow };
    if (position.before) {
      vars.last = state.size;
      vars.before = position.before;
    } else {
      vars.first = state.size;
      if (position.after) vars.after = position.after;
    }
    if (state.search) vars.search = state.search;
    const { after, before } = bounds();
    if (after) vars.createdAfter = after.toISOString();
    if (before) vars.createdBefore = before.toISOString();
    return vars;
  }

  function isFirst(position) {
    return !position.after && !position.before;
  }

  function onFirstPage() {
    return isFirst(state.position) && state.offset === 0;
  }

  async function load(position, { offset = 0, quiet = false, focus = false } = {}) {
    if (!state.token || !state.flow) return;
    const ticket = ++state.loading;
    state.busy = position;
    hideNotice();
    ui.table.setAttribute("aria-busy", "true");
    if (!quiet) {
      ui.summary.textContent = "Loading leads…";
      if (!state.edges.length) showPlaceholder("Loading leads…");
    }
    setPagerBusy(true);
    try {
      const data = await graphql(PAGE_QUERY, variables(position));
      if (ticket !== state.loading) return;
      const page = data.leads;
      state.position = position;
      state.edges = page.edges;
      state.pageInfo = page.pageInfo;
      state.totalCount = page.totalCount;
      state.offset = page.pageInfo.hasPreviousPage ? Math.max(0, offset) : 0;
      state.busy = null;
      if (onFirstPage()) clearUnseen();
      renderPage();
      if (focus) ui.title.focus();
      if (state.resync) {
        state.resync = false;
        if (onFirstPage()) reload({ quiet: true });
      }
    } catch (error) {
      if (ticket !== state.loading) return;
      state.busy = null;
      state.resync = false;
      handle(error, () => load(position, { offset }));
      if (!state.edges.length) {
        ui.rows.replaceChildren();
        show(ui.tableWrap, false);
        show(ui.empty, false);
      }
      renderSummary();
      setPagerBusy(false);
    } finally {
      if (ticket === state.loading) ui.table.setAttribute("aria-busy", "false");
    }
  }

  function reload({ quiet = false } = {}) {
    return load(state.position, { offset: state.offset, quiet });
  }

  function handle(error, retry) {
    if (error instanceof Refused) {
      tokenRefused();
      return;
    }
    let message = error instanceof Failed ? error.message : "Something went wrong.";
    if (error instanceof Failed && error.code === "FORBIDDEN") {
      message =
        "This token may not do that here. Reading needs the leads:read scope (and " +
        "this chat flow among the token's flows); deleting needs leads:delete.";
    }
    showNotice(message, error instanceof Failed && error.retry ? retry : null);
  }

  let retryAction = null;

  function showNotice(message, retry) {
    ui.noticeText.textContent = message;
    retryAction = retry;
    show(ui.retry, Boolean(retry));
    show(ui.notice, true);
  }

  function hideNotice() {
    show(ui.notice, false);
    retryAction = null;
  }

  function setPagerBusy(busy) {
    ui.newer.disabled = busy || !(state.pageInfo && state.pageInfo.hasPreviousPage);
    ui.older.disabled = busy || !(state.pageInfo && state.pageInfo.hasNextPage);
  }

  function showPlaceholder(text) {
    const cell = el("td", { colspan: "6", className: "empty", text });
    ui.rows.replaceChildren(el("tr", { className: "placeholder" }, cell));
    show(ui.tableWrap, true);
    show(ui.empty, false);
  }

  function showEmpty(text) {
    ui.rows.replaceChildren();
    show(ui.tableWrap, false);
    ui.emptyText.textContent = text;
    show(ui.empty, true);
  }

  function showRows(rows) {
    ui.rows.replaceChildren(...rows);
    show(ui.tableWrap, true);
    show(ui.empty, false);
  }

  function renderSummary() {
    show(ui.clearFilters, filtered());
    if (!state.pageInfo) {
      ui.summary.textContent = "";
      return;
    }
    const total = state.totalCount;
    const count = plural(total, "lead", "leads");
    const noun = filtered() ? `${count} match` : count;
    if (!state.edges.length) {
      ui.summary.textContent = noun;
      return;
    }
    const first = state.offset + 1;
    const last = state.offset + state.edges.length;
    ui.summary.textContent = `${noun} · showing ${first.toLocaleString()}–${last.toLocaleString()}`;
  }

  function renderPage() {
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.leadId
      : undefined;
    renderSummary();
    // Nothing to export from a flow with no leads at all (a filter that matches
    // none says nothing of the flow: the export is of the whole flow).
    setExportable(filtered() || state.totalCount > 0);
    setPagerBusy(false);
    if (!state.edges.length) {
      if (filtered()) showEmpty("No leads match these filters.");
      else if (state.position.after || state.position.before) showEmpty("No more leads.");
      else showEmpty("No leads in this chat flow yet. New ones will appear here as they arrive.");
      return;
    }
    showRows(state.edges.map((edge) => leadRow(edge.node, false)));
    if (focused) {
      const again = ui.rows.querySelector(`button[data-lead-id="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function cell(label, className, content) {
    const td = el("td", { className, dataset: { label } });
    if (content === null || content === undefined || content === "") {
      td.append(
        el("span", { className: "none", "aria-hidden": "true", text: "—" }),
        el("span", { className: "visually-hidden", text: "not given" }),
      );
    } else {
      td.append(content);
    }
    return td;
  }

  function leadRow(lead, fresh) {
    const time = el("time", { datetime: lead.createdDate, title: lead.createdDate, text: when(lead.createdDate) });
    const email = lead.email
      ? el("a", { href: `mailto:${lead.email}`, text: lead.email })
      : null;
    const phone = lead.phone
      ? el("a", { href: `tel:${lead.phone.replace(/[^0-9+]/g, "")}`, text: lead.phone })
      : null;
    const row = el(
      "tr",
      { className: fresh ? "is-fresh" : "", dataset: { id: lead.id } },
      cell("Received", "when", time),
      cell("Name", "name", lead.name),
      cell("Email", "email", email),
      cell("Phone", "phone", phone),
      cell("Chat", "chat", lead.chatId),
    );
    if (mayDelete()) {
      const button = el("button", {
        type: "button",
        className: "link",
        "aria-label": `Delete the lead of ${describe(lead)}`,
        dataset: { leadId: lead.id },
        text: "Delete",
        onclick: () => confirmDelete(lead, button),
      });
      row.append(el("td", { className: "actions", dataset: { label: "" } }, button));
    }
    return row;
  }

  // ---- live updates --------------------------------------------------------

  function matches(lead) {
    if (state.search) {
      const needle = state.search.toLowerCase();
      const found = [lead.name, lead.email, lead.phone].some(
        (value) => value && value.toLowerCase().includes(needle),
      );
      if (!found) return false;
    }
    const created = new Date(lead.createdDate);
    const { after, before } = bounds();
    if (after && created < after) return false;
    if (before && created >= before) return false;
    return true;
  }

  // Newest first: (createdDate, id) descending, as the server orders.
  function newer(a, b) {
    const ta = Date.parse(a.createdDate);
    const tb = Date.parse(b.createdDate);
    return ta !== tb ? ta > tb : a.id > b.id;
  }

  function setExportable(yes) {
    ui.exportButton.disabled = !yes;
    ui.exportButton.title = yes ? "" : "This chat flow has no leads to export yet.";
  }

  function onLiveLead(lead) {
    if (!lead || String(lead.chatflowid).toLowerCase() !== state.flow.toLowerCase()) return;
    setExportable(true);
    if (!matches(lead)) return;
    if (state.edges.some((edge) => edge.node.id === lead.id)) return;
    state.totalCount += 1;
    if (!onFirstPage()) {
      state.unseen += 1;
      ui.showNewest.textContent = `${plural(state.unseen, "new lead", "new leads")} arrived · Show the newest`;
      show(ui.fresh, true);
      renderSummary();
      return;
    }
    let index = state.edges.findIndex((edge) => newer(lead, edge.node));
    if (index === -1) {
      if (state.pageInfo && state.pageInfo.hasNextPage) {
        renderSummary(); // it belongs to a later page
        return;
      }
      index = state.edges.length;
    }
    state.edges.splice(index, 0, { cursor: null, node: lead });
    if (state.edges.length > state.size) {
      state.edges.pop();
      state.pageInfo.hasNextPage = true;
      state.pageInfo.endCursor = state.edges[state.edges.length - 1].cursor;
    }
    show(ui.empty, false);
    show(ui.tableWrap, true);
    const row = leadRow(lead, true);
    const before = ui.rows.querySelectorAll("tr:not(.placeholder)")[index];
    ui.rows.querySelectorAll("tr.placeholder").forEach((tr) => tr.remove());
    ui.rows.insertBefore(row, before || null);
    while (ui.rows.children.length > state.size) ui.rows.lastElementChild.remove();
    renderSummary();
    setPagerBusy(Boolean(state.busy));
  }

  function clearUnseen() {
    state.unseen = 0;
    show(ui.fresh, false);
  }

  function setLive(kind, text) {
    ui.live.dataset.state = kind;
    ui.liveText.textContent = text;
  }

  // A small client of the graphql-transport-ws protocol (the graphql-ws library's):
  // connection_init with the token, one subscription, ping/pong, and a reconnect
  // with backoff after anything but a refusal (the page refetches then, since
  // leads may have come meanwhile).
  class LiveLeads {
    constructor(token, flow, handlers) {
      this.token = token;
      this.flow = flow;
      this.handlers = handlers;
      this.socket = null;
      this.attempts = 0;
      this.timer = null;
      this.stopped = false;
      this.sequence = 0;
    }

    start() {
      this.connect();
    }

    connect() {
      if (this.stopped) return;
      const url =
        (window.location.protocol === "https:" ? "wss://" : "ws://") +
        window.location.host +
        "/graphql";
      this.handlers.onState("connecting", "Connecting…");
      let socket;
      try {
        socket = new WebSocket(url, "graphql-transport-ws");
      } catch (error) {
        this.retry();
        return;
      }
      this.socket = socket;
      let acknowledged = false;
      const waitForAck = setTimeout(() => socket.close(4408, "No acknowledgement"), 10000);
      const send = (message) => {
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
      };
      socket.onopen = () => {
        send({ type: "connection_init", payload: { Authorization: `Bearer ${this.token}` } });
      };
      socket.onmessage = (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (error) {
          socket.close(4400, "Invalid message");
          return;
        }
        switch (message.type) {
          case "connection_ack": {
            acknowledged = true;
            clearTimeout(waitForAck);
            this.id = String(++this.sequence);
            send({
              id: this.id,
              type: "subscribe",
              payload: {
                query: LIVE_SUBSCRIPTION,
                operationName: "LeadCreated",
                variables: { chatflowid: this.flow },
              },
            });
            const again = this.attempts > 0 || this.everAcknowledged;
            this.attempts = 0;
            this.everAcknowledged = true;
            this.handlers.onState("live", "Live");
            this.handlers.onConnected(again);
            break;
          }
          case "ping":
            send({ type: "pong" });
            break;
          case "next":
            if (message.id === this.id && message.payload) {
              const data = message.payload.data;
              if (data && data.leadCreated) this.handlers.onLead(data.leadCreated);
            }
            break;
          case "error":
            if (message.id === this.id) {
              const first = Array.isArray(message.payload) ? message.payload[0] : null;
              const code = first && first.extensions ? first.extensions.code : null;
              this.handlers.onState(
                "refused",
                code === "FORBIDDEN"
                  ? "Not live: this token may not watch this flow"
                  : "Not live: the server refused the subscription",
              );
              this.stop();
            }
            break;
          case "complete":
            if (message.id === this.id) socket.close(1000, "Completed");
            break;
          default:
            break;
        }
      };
      socket.onclose = (event) => {
        clearTimeout(waitForAck);
        if (this.socket !== socket || this.stopped) return;
        this.socket = null;
        if (event.code === 4403) {
          this.stopped = true;
          this.handlers.onRefused();
          return;
        }
        this.retry();
      };
    }

    retry() {
      if (this.stopped) return;
      const base = Math.min(30000, 1000 * 2 ** this.attempts);
      const delay = Math.round(base / 2 + (Math.random() * base) / 2);
      this.attempts += 1;
      const seconds = Math.max(1, Math.round(delay / 1000));
      this.handlers.onState(
        "retrying",
        this.everAcknowledged
          ? `Connection lost · reconnecting in ${seconds} s`
          : "Not live · retrying",
      );
      this.timer = setTimeout(() => this.connect(), delay);
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      const socket = this.socket;
      this.socket = null;
      if (socket) {
        if (socket.readyState === WebSocket.OPEN && this.id) {
          socket.send(JSON.stringify({ id: this.id, type: "complete" }));
        }
        socket.close(1000, "Bye");
      }
    }
  }

  function startLive() {
    stopLive();
    if (!state.token || !state.flow) return;
    state.live = new LiveLeads(state.token, state.flow, {
      onState: setLive,
      onLead: onLiveLead,
      onRefused: tokenRefused,
      onConnected(again) {
        // Leads may have been stored while no subscription ran (before this one
        // started, or while the socket was down): the first page again, quietly,
        // after the load under way if there is one (a lead shown twice is
        // dropped by its id).
        if (state.busy && isFirst(state.busy)) state.resync = true;
        else if (!state.busy && onFirstPage()) reload({ quiet: true });
        else if (again) {
          ui.showNewest.textContent = "The live feed was interrupted · Show the newest";
          show(ui.fresh, true);
        }
      },
    });
    state.live.start();
  }

  function stopLive() {
    if (state.live) state.live.stop();
    state.live = null;
    setLive("off", "Not live");
  }

  // ---- export and delete ---------------------------------------------------

  function fileName(disposition) {
    const match = /filename="([^"]+)"/.exec(disposition || "");
    return match ? match[1] : `${state.flow}-leads.csv`;
  }

  async function exportCsv() {
    const button = ui.exportButton;
    button.disabled = true;
    button.textContent = "Exporting…";
    hideNotice();
    try {
      const response = await request(
        `/leads/${encodeURIComponent(state.flow)}/export?format=csv`,
        { headers: authorization() },
      );
      if (response.status === 404) {
        showNotice("This chat flow has no leads to export.", null);
        return;
      }
      if (response.status === 403) {
        showNotice("This token may not export this chat flow (it needs leads:read).", null);
        return;
      }
      if (!response.ok) throw new Failed(`The export failed (${response.status}).`);
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: fileName(response.headers.get("Content-Disposition")) });
      link.hidden = true;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      say(`Downloaded ${link.download}.`);
    } catch (error) {
      handle(error, exportCsv);
    } finally {
      button.disabled = false;
      button.textContent = "Export CSV";
    }
  }

  let pendingDelete = null;

  function confirmDelete(lead, button) {
    pendingDelete = { lead, button };
    const parts = ["The lead of ", el("strong", { text: describe(lead) })];
    const more = [lead.email, lead.phone].filter((v) => v && v !== describe(lead));
    if (more.length) parts.push(` (${more.join(", ")})`);
    const created = new Date(lead.createdDate);
    const today = sameDay(created, new Date()) ? "today " : "";
    parts.push(`, received ${today}${at(created)}, will be deleted for good.`);
    ui.confirmText.replaceChildren(...parts);
    ui.confirm.showModal();
    ui.confirmCancel.focus();
  }

  function closeConfirm() {
    if (ui.confirm.open) ui.confirm.close();
  }

  async function deleteConfirmed() {
    if (!pendingDelete) return;
    const { lead, button } = pendingDelete;
    pendingDelete = null;
    closeConfirm();
    button.disabled = true;
    try {
      await graphql(DELETE_MUTATION, { id: lead.id });
    } catch (error) {
      button.disabled = false;
      handle(error, null);
      button.focus();
      return;
    }
    const index = state.edges.findIndex((edge) => edge.node.id === lead.id);
    if (index !== -1) {
      state.edges.splice(index, 1);
      state.totalCount = Math.max(0, state.totalCount - 1);
    }
    const row = button.closest("tr");
    const next = row && (row.nextElementSibling || row.previousElementSibling);
    if (row) row.remove();
    renderSummary();
    say(`Deleted the lead of ${describe(lead)}.`);
    if (!state.edges.length) {
      reload();
      ui.title.focus();
      return;
    }
    const target = next && next.querySelector("button[data-lead-id]");
    if (target) target.focus();
    else ui.title.focus();
  }

  // ---- wiring --------------------------------------------------------------

  function readFilters() {
    state.search = ui.search.value.trim();
    state.from = ui.from.value;
    state.to = ui.to.value;
  }

  function chooseFlow() {
    const flow = ui.flow.value.trim().toLowerCase();
    let problem = null;
    if (!flow) problem = "Enter the id of a chat flow.";
    else if (!UUID.test(flow)) {
      problem = "A chat flow id is a UUID, like 3fa85f64-5717-4562-b3fc-2c963f66afa6.";
    } else if (state.from && state.to && state.from > state.to) {
      problem = "The first day is after the last one.";
    }
    ui.flowError.textContent = problem || "";
    show(ui.flowError, Boolean(problem));
    ui.flow.setAttribute("aria-invalid", UUID.test(flow) ? "false" : "true");
    if (problem) return false;
    const changed = flow !== state.flow;
    state.flow = flow;
    ui.flow.value = flow;
    session.set(FLOW_KEY, flow);
    if (changed || !state.live) {
      state.edges = [];
      startLive();
    }
    return true;
  }

  function applyFilters({ focus = false } = {}) {
    readFilters();
    if (!chooseFlow()) return;
    clearUnseen();
    load({}, { focus });
  }

  let searchTimer = null;

  function start() {
    ui.tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const problem = setToken(ui.token.value);
      ui.token.value = "";
      if (problem) {
        renderAccess(problem);
        ui.token.focus();
        return;
      }
      renderAccess(null);
      if (ui.flow.value) {
        applyFilters();
      } else {
        ui.flow.focus();
      }
    });
    ui.changeToken.addEventListener("click", () => {
      renderAccess(null);
      show(ui.tokenForm, true);
      show(ui.identity, false);
      ui.token.focus();
    });
    ui.forgetToken.addEventListener("click", () => {
      forgetToken(null);
      state.edges = [];
      ui.rows.replaceChildren();
      ui.token.focus();
    });
    ui.filters.addEventListener("submit", (event) => {
      event.preventDefault();
      applyFilters({ focus: false });
    });
    ui.search.addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        if (state.flow && ui.search.value.trim() !== state.search) applyFilters();
      }, 350);
    });
    for (const input of [ui.from, ui.to]) {
      input.addEventListener("change", () => {
        if (state.flow) applyFilters();
      });
    }
    ui.clearFilters.addEventListener("click", () => {
      ui.search.value = "";
      ui.from.value = "";
      ui.to.value = "";
      if (state.flow) applyFilters();
    });
    ui.pageSize.addEventListener("change", () => {
      state.size = Number(ui.pageSize.value) || 50;
      session.set(SIZE_KEY, String(state.size));
      if (state.flow) load({});
    });
    ui.older.addEventListener("click", () => {
      const cursor = state.pageInfo && state.pageInfo.endCursor;
      if (!cursor) return load({});
      return load({ after: cursor }, { offset: state.offset + state.edges.length, focus: true });
    });
    ui.newer.addEventListener("click", () => {
      const first = state.edges.find((edge) => edge.cursor);
      if (!first) return load({});
      return load({ before: first.cursor }, { offset: state.offset - state.size, focus: true });
    });
    ui.showNewest.addEventListener("click", () => {
      clearUnseen();
      load({}, { focus: true });
    });
    ui.retry.addEventListener("click", () => {
      const action = retryAction;
      hideNotice();
      if (action) action();
    });
    ui.exportButton.addEventListener("click", exportCsv);
    ui.confirmCancel.addEventListener("click", () => {
      const target = pendingDelete && pendingDelete.button;
      pendingDelete = null;
      closeConfirm();
      if (target) target.focus();
    });
    ui.confirmDelete.addEventListener("click", deleteConfirmed);
    ui.confirm.addEventListener("close", () => {
      if (pendingDelete) {
        const target = pendingDelete.button;
        pendingDelete = null;
        target.focus();
      }
    });

    const size = Number(session.get(SIZE_KEY));
    if ([25, 50, 100].includes(size)) {
      state.size = size;
      ui.pageSize.value = String(size);
    }
    const flow = session.get(FLOW_KEY);
    if (flow) ui.flow.value = flow;
    const token = session.get(TOKEN_KEY);
    if (token && !setToken(token)) {
      renderAccess(null);
      if (ui.flow.value) applyFilters();
      else ui.flow.focus();
    } else {
      renderAccess(null);
      ui.token.focus();
    }
  }

  start();
})();
