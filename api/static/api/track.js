// The status page: ask /api/v1/ for the orders of a transaction hash or an address, show
// them, and poll again every data-poll-ms with If-None-Match: the API answers 304 while
// nothing changed, so a poll is cheap.
(function () {
  "use strict";
  const pollMs = Number(document.currentScript.dataset.pollMs) || 5000;
  const form = document.getElementById("track-form");
  const input = document.getElementById("q");
  const list = document.getElementById("orders");
  const message = document.getElementById("message");
  const updated = document.getElementById("updated");
  let timer = null;

  function urlFor(q) {
    if (/^0x[0-9a-fA-F]{64}$/.test(q)) return "/api/v1/orders/by-tx/" + q;
    if (/^0x[0-9a-fA-F]{40}$/.test(q)) return "/api/v1/orders?address=" + q;
    return null;
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  function row(dl, label, value) {
    if (value === null || value === undefined) return;
    dl.append(el("dt", label), el("dd", value));
  }

  function render(orders) {
    list.replaceChildren();
    for (const o of orders) {
      const box = el("section", null, "order");
      box.dataset.kind = o.kind;
      box.dataset.vaultId = o.vault_id;
      const h = el("h2", (o.kind === "deposit" ? "Deposit " : "Redeem ") + o.vault_id + " · " + o.symbol + " ");
      h.append(el("span", o.status, "status " + o.status));
      box.append(h);
      const dl = el("dl");
      row(dl, "deposited USDT", o.deposited_usdt);
      row(dl, "redeemed shares", o.redeemed_shares);
      row(dl, "price", o.price);
      row(dl, "shares minted", o.shares_minted);
      row(dl, "shares sold", o.shares_sold);
      row(dl, "fees USDT", o.fees_usdt);
      row(dl, "USDT refunded", o.usdt_refunded);
      row(dl, "USDT paid", o.usdt_paid);
      row(dl, "settlement tx", o.settlement_tx);
      box.append(dl);
      const ol = el("ol", null, "timeline");
      for (const s of o.timeline) {
        const li = el("li", s.description);
        li.dataset.stage = s.stage;
        li.append(el("span", new Date(s.at).toLocaleString(), "at"));
        ol.append(li);
      }
      box.append(ol);
      list.append(box);
    }
  }

  // One query is shown at a time: `shown` counts them, and a poll of an older query stops
  // at its next step (a new query never leaves two loops polling).
  let shown = 0;
  // Pages of an address shown: "Show more" adds one. Each page keeps its ETag and body, so
  // a poll of an unchanged page is a 304 and the page keeps what it shows.
  let pages = 1;
  const etags = new Map();
  const bodies = new Map();
  const more = document.getElementById("more");

  function detailText(body) {
    const d = body && body.detail;
    return typeof d === "string" ? d : JSON.stringify(d);
  }

  async function poll(base, mine) {
    let wait = pollMs;
    try {
      const orders = [];
      let url = base;
      let next = null;
      let changed = false;
      for (let i = 0; i < pages && url; i++) {
        const headers = { Accept: "application/json" };
        if (etags.has(url)) headers["If-None-Match"] = etags.get(url);
        const response = await fetch(url, { headers, cache: "no-store" });
        if (mine !== shown) return;
        let body;
        if (response.status === 304 && bodies.has(url)) {
          body = bodies.get(url);
        } else {
          body = await response.json();
          if (mine !== shown) return;
          if (response.status === 429 || response.status === 503) {
            // Busy or the broker is away: keep what is shown and come back when told.
            const after = Number(response.headers.get("Retry-After")) || pollMs / 1000;
            wait = Math.max(pollMs, after * 1000);
            message.textContent = detailText(body) + " — retrying in " + Math.ceil(wait / 1000) + " s";
            message.className = "error";
            timer = setTimeout(() => poll(base, mine), wait);
            return;
          }
          if (!response.ok) {
            message.textContent = detailText(body);
            message.className = "error";
            list.replaceChildren();
            more.hidden = true;
            etags.clear();
            bodies.clear();
            url = null;
            orders.length = 0;
            next = undefined;
            break;
          }
          etags.set(url, response.headers.get("ETag"));
          bodies.set(url, body);
          changed = true;
        }
        orders.push(...body.orders);
        next = body.next_cursor;
        url = next ? base + "&cursor=" + encodeURIComponent(next) : null;
      }
      if (next !== undefined) {
        message.textContent = orders.length + " order(s)" + (next ? ", more below" : "");
        message.className = "";
        more.hidden = !next;
        if (changed) render(orders);
        updated.textContent = "Updated " + new Date().toLocaleTimeString() + (changed ? "" : " (no change)");
      }
    } catch (err) {
      if (mine !== shown) return;
      message.textContent = "Could not reach the API: " + err;
      message.className = "error";
    }
    timer = setTimeout(() => poll(base, mine), wait);
  }

  let current = null;

  function start(q) {
    clearTimeout(timer);
    shown += 1;
    pages = 1;
    etags.clear();
    bodies.clear();
    more.hidden = true;
    current = urlFor(q.trim());
    if (!current) {
      message.textContent = "Paste a transaction hash (0x + 64 hex digits) or an address (0x + 40 hex digits).";
      message.className = "error";
      list.replaceChildren();
      return;
    }
    history.replaceState(null, "", "?q=" + encodeURIComponent(q.trim()));
    poll(current, shown);
  }

  more.addEventListener("click", () => {
    if (!current) return;
    clearTimeout(timer);
    shown += 1;
    pages += 1;
    poll(current, shown);
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); start(input.value); });
  if (input.value) start(input.value);
})();
