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

  let etag = null;

  async function poll(url) {
    try {
      const headers = { Accept: "application/json" };
      if (etag) headers["If-None-Match"] = etag;
      // The ETag is kept here, not in the HTTP cache: an unchanged answer is a 304 with no
      // body, and the page keeps what it shows.
      const response = await fetch(url, { headers, cache: "no-store" });
      if (response.status === 304) {
        updated.textContent = "Updated " + new Date().toLocaleTimeString() + " (no change)";
        timer = setTimeout(() => poll(url), pollMs);
        return;
      }
      etag = response.headers.get("ETag");
      const body = await response.json();
      if (!response.ok) {
        message.textContent = body.detail && body.detail.length !== undefined && typeof body.detail !== "string"
          ? JSON.stringify(body.detail) : body.detail;
        message.className = "error";
        list.replaceChildren();
      } else {
        message.textContent = body.orders.length + " order(s)";
        message.className = "";
        render(body.orders);
      }
      updated.textContent = "Updated " + new Date().toLocaleTimeString();
    } catch (err) {
      message.textContent = "Could not reach the API: " + err;
      message.className = "error";
    }
    timer = setTimeout(() => poll(url), pollMs);
  }

  function start(q) {
    clearTimeout(timer);
    etag = null;
    const url = urlFor(q.trim());
    if (!url) {
      message.textContent = "Paste a transaction hash (0x + 64 hex digits) or an address (0x + 40 hex digits).";
      message.className = "error";
      list.replaceChildren();
      return;
    }
    history.replaceState(null, "", "?q=" + encodeURIComponent(q.trim()));
    poll(url);
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); start(input.value); });
  if (input.value) start(input.value);
})();
