// cpn dashboard: draws the net from /api/net once, then polls /api/state and applies
// each new snapshot (counts, rates, shards, slots). Everything that comes from the
// cluster is inserted with textContent or setAttribute, never as markup: a token's
// value is text, whatever characters it holds.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const SLOTS_PER_ROW = 32;
  const SLOT_SIZE = 8;
  const PALETTE = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
    "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
  ];
  // Exposed for tests and the benchmark: how many snapshots were applied, and when the
  // net was first drawn with its counts (ms since navigation start).
  const stats = { applied: 0, firstRenderMs: null, lastSeq: -1 };
  window.cpnDashboard = stats;

  let net = null;
  let interval = 250;
  const places = new Map(); // name -> {group, shape, count}
  const transitions = new Map(); // name -> {group, shape, rate}
  const slotRects = [];
  let selectedPlace = null;

  function el(name, attrs, text) {
    const node = document.createElement(name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function svg(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  // Heat: 0 (cold, pale) .. 1 (hot, red), on a log scale so one busy place does not
  // leave every other one white.
  function heat(value, max) {
    if (!value || !max) return "#f4f6f8";
    const t = Math.min(1, Math.log1p(value) / Math.log1p(max));
    const hue = 55 - 55 * t;
    const light = 92 - 42 * t;
    return `hsl(${hue.toFixed(0)}, 90%, ${light.toFixed(0)}%)`;
  }

  function drawNet(layout) {
    const view = document.getElementById("net-view");
    const root = svg("svg", {
      viewBox: `0 0 ${layout.width} ${layout.height}`,
      width: layout.width,
      height: layout.height,
      id: "net-svg",
      role: "img",
    });
    root.appendChild(svg("title", {}, `net ${layout.net}`));
    const defs = svg("defs");
    const marker = svg("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
    });
    marker.appendChild(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
    defs.appendChild(marker);
    const dot = svg("marker", {
      id: "odot", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7,
    });
    dot.appendChild(svg("circle", { cx: 5, cy: 5, r: 4, class: "inhibitor-dot" }));
    defs.appendChild(dot);
    root.appendChild(defs);
    for (const edge of layout.edges) {
      const [s, c, e] = edge.path;
      const path = svg("path", {
        d: `M ${s[0]} ${s[1]} Q ${c[0]} ${c[1]} ${e[0]} ${e[1]}`,
        class: `arc ${edge.kind}`,
      });
      if (edge.kind === "inhibit") path.setAttribute("marker-end", "url(#odot)");
      else if (edge.kind !== "read") path.setAttribute("marker-end", "url(#arrow)");
      path.appendChild(svg("title", {}, edge.label));
      root.appendChild(path);
    }
    for (const node of layout.nodes) {
      const group = svg("g", { class: node.kind, "data-id": node.id });
      let shape;
      if (node.kind === "place") {
        group.setAttribute("data-place", node.name);
        shape = svg("circle", { cx: node.x, cy: node.y, r: node.width / 2, class: "shape" });
      } else {
        group.setAttribute("data-transition", node.name);
        shape = svg("rect", {
          x: node.x - node.width / 2, y: node.y - node.height / 2,
          width: node.width, height: node.height, class: "shape",
        });
      }
      group.appendChild(shape);
      group.appendChild(svg("title", {}, node.details.join("\n")));
      const below = node.y + node.height / 2 + 13;
      group.appendChild(svg("text", { x: node.x, y: below, class: "name" }, node.name));
      const figure = svg("text", {
        x: node.x,
        y: node.kind === "place" ? node.y + 4 : node.y - node.height / 2 - 6,
        class: node.kind === "place" ? "count" : "rate",
      }, node.kind === "place" ? "?" : "");
      group.appendChild(figure);
      if (node.kind === "place") {
        group.addEventListener("click", () => showTokens(node.name));
        places.set(node.name, { group, shape, figure });
      } else {
        transitions.set(node.name, { group, shape, figure });
      }
      root.appendChild(group);
    }
    view.replaceChildren(root);
  }

  function drawSlots(count) {
    const rows = Math.ceil(count / SLOTS_PER_ROW);
    const root = svg("svg", {
      viewBox: `0 0 ${SLOTS_PER_ROW * SLOT_SIZE} ${rows * SLOT_SIZE}`,
      width: SLOTS_PER_ROW * SLOT_SIZE, height: rows * SLOT_SIZE, id: "slots-svg",
    });
    for (let i = 0; i < count; i++) {
      const rect = svg("rect", {
        x: (i % SLOTS_PER_ROW) * SLOT_SIZE, y: Math.floor(i / SLOTS_PER_ROW) * SLOT_SIZE,
        width: SLOT_SIZE - 1, height: SLOT_SIZE - 1, class: "slot", "data-slot": i,
      });
      const title = svg("title", {}, `slot ${i}`);
      rect.appendChild(title);
      slotRects.push({ rect, title, owner: null, moving: false });
      root.appendChild(rect);
    }
    document.getElementById("slot-map").replaceChildren(root);
  }

  function format(value, digits) {
    if (value === null || value === undefined) return "-";
    return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits || 0 });
  }

  function applyNet(state) {
    const counts = Object.values(state.places);
    const maxCount = Math.max(0, ...counts);
    for (const [name, place] of places) {
      const count = state.places[name] || 0;
      place.figure.textContent = format(count);
      place.group.setAttribute("data-count", String(count));
      place.shape.style.fill = heat(count, maxCount);
    }
    const maxRate = Math.max(0, ...Object.values(state.rates));
    for (const [name, transition] of transitions) {
      const rate = state.rates[name] || 0;
      transition.figure.textContent = rate ? `${format(rate, 1)}/s` : "";
      transition.group.setAttribute("data-rate", String(rate));
      transition.group.setAttribute("data-firings", String(state.firings[name] || 0));
      transition.shape.style.fill = rate ? heat(rate, maxRate) : "#5b6770";
    }
  }

  function applyShards(state) {
    const rows = state.shards.map((shard) => {
      const health = !shard.alive ? "down" : shard.progressing ? "ok" : "stuck";
      const tr = el("tr", { class: `health-${health}`, "data-shard": shard.id });
      const cells = [
        shard.id, health, shard.pid, shard.incarnation, shard.restarts, shard.slots,
        shard.epoch, format(shard.firings), format(shard.firings_per_s, 1),
        format(shard.outbox_tokens),
      ];
      for (const cell of cells) tr.appendChild(el("td", {}, cell === null ? "-" : cell));
      if (shard.error) tr.setAttribute("title", shard.error);
      return tr;
    });
    document.querySelector("#shards tbody").replaceChildren(...rows);
  }

  function applySlots(state) {
    if (!state.owners.length) return;
    if (!slotRects.length) drawSlots(state.owners.length);
    const moving = new Map(state.moves.map((m) => [m.slot, m]));
    state.owners.forEach((owner, i) => {
      const slot = slotRects[i];
      const move = moving.get(i);
      if (slot.owner !== owner || slot.moving !== Boolean(move)) {
        slot.rect.style.fill = PALETTE[owner % PALETTE.length];
        slot.rect.classList.toggle("moving", Boolean(move));
        slot.title.textContent = move
          ? `slot ${i}: shard ${move.source} → ${move.target} (${move.state})`
          : `slot ${i}: shard ${owner}`;
        slot.owner = owner;
        slot.moving = Boolean(move);
      }
    });
    const owned = new Map();
    for (const owner of state.owners) owned.set(owner, (owned.get(owner) || 0) + 1);
    const legend = [...owned.keys()].sort((a, b) => a - b).map((owner) => {
      const item = el("li", {});
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = PALETTE[owner % PALETTE.length];
      item.append(swatch, el("span", {}, `shard ${owner}: ${owned.get(owner)} slots`));
      return item;
    });
    document.getElementById("slot-legend").replaceChildren(...legend);
    document.getElementById("slots-summary").textContent =
      `${state.owners.length} slots, epoch ${state.epoch}; moves: ${state.moves.length} ` +
      `in flight, ${state.moves_done} done, ${state.moves_aborted} aborted`;
    const moves = state.moves.slice(0, 50).map((m) => {
      const tr = el("tr", {});
      for (const cell of [m.move_id, m.slot, m.source, m.target, m.state]) {
        tr.appendChild(el("td", {}, cell));
      }
      return tr;
    });
    document.querySelector("#moves tbody").replaceChildren(...moves);
  }

  function apply(state) {
    document.getElementById("net-name").textContent = state.net;
    const when = state.sampled_ms ? new Date(state.sampled_ms).toLocaleTimeString() : "-";
    const status = document.getElementById("status");
    status.textContent = state.error
      ? `sample ${state.seq} at ${when}: ${state.error}`
      : `sample ${state.seq} at ${when}, every ${interval} ms`;
    status.classList.toggle("error", Boolean(state.error));
    if (state.seq === 0) return;
    applyNet(state);
    applyShards(state);
    applySlots(state);
    stats.applied += 1;
    stats.lastSeq = state.seq;
    document.body.setAttribute("data-applied", String(stats.applied));
    if (stats.firstRenderMs === null) {
      stats.firstRenderMs = performance.now();
      document.body.setAttribute("data-first-render-ms", stats.firstRenderMs.toFixed(1));
    }
  }

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `${url}: HTTP ${response.status}`);
    return body;
  }

  async function showTokens(place) {
    selectedPlace = place;
    for (const [name, p] of places) p.group.classList.toggle("selected", name === place);
    document.getElementById("tokens-place").textContent = `place ${place}`;
    const summary = document.getElementById("tokens-summary");
    const list = document.getElementById("tokens-list");
    summary.textContent = "loading…";
    try {
      const answer = await getJSON(`/api/tokens?place=${encodeURIComponent(place)}&limit=100`);
      if (selectedPlace !== place) return; // another place was clicked meanwhile
      const fields = (net.fields && net.fields[place]) || [];
      // The count is the last sample's; the list is read now: they may differ by a
      // few tokens on a busy place.
      summary.textContent =
        `${answer.tokens.length} listed (at most 100); ${format(answer.total)} at the last sample`;
      list.replaceChildren(...answer.tokens.map((token) => {
        const shown = fields.length === token.fields.length
          ? fields.map((f, i) => `${f}=${JSON.stringify(token.fields[i])}`).join(", ")
          : JSON.stringify(token.fields);
        return el("li", { "data-shard": token.shard }, `shard ${token.shard}: ${shown}`);
      }));
    } catch (error) {
      summary.textContent = String(error.message || error);
      list.replaceChildren();
    }
  }

  async function poll() {
    try {
      const state = await getJSON("/api/state");
      if (state.seq !== stats.lastSeq) apply(state);
    } catch (error) {
      const status = document.getElementById("status");
      status.textContent = `the dashboard server did not answer: ${error.message || error}`;
      status.classList.add("error");
    }
    // Twice per sample, so that no sample is missed for long whatever the phase.
    window.setTimeout(poll, Math.max(100, interval / 2));
  }

  async function start() {
    try {
      net = await getJSON("/api/net");
    } catch (error) {
      document.getElementById("status").textContent = `cannot load the net: ${error}`;
      window.setTimeout(start, 1000);
      return;
    }
    interval = net.interval_ms;
    drawNet(net.layout);
    poll();
  }

  start();
})();
