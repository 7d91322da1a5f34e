// socklab chat in the browser: one WebSocket, the same commands as nc users type, events as JSON.
// Reconnects on its own (with back-off) and catches up from the last sequence number seen per room,
// so a server restart loses nothing: messages are deduplicated by (room, seq).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = {
    ws: null, nick: localStorage.getItem("socklab.nick") || "", current: null, rooms: new Map(),
    lastSeq: JSON.parse(localStorage.getItem("socklab.seq") || "{}"), wanted: [], retry: 0, timer: null,
    wantConnected: false, named: false, nickPending: false, switchOnJoin: null, wantNick: "", whoAsked: new Set(),
  };
  $("nick").value = state.nick;

  function room(name) {
    if (!state.rooms.has(name)) {
      // crowded: the server counts joins and parts (PRESENCE) instead of naming them; count is its figure
      state.rooms.set(name, { name, lines: [], members: new Set(), topic: "", unread: false, joined: false,
                              crowded: false, count: 0, counted: new Set() });
    }
    return state.rooms.get(name);
  }

  function setStatus(text, cls) { const s = $("status"); s.textContent = text; s.className = "status " + cls; }

  // A refused nick: the server's reason in red beside the form, until a nick is accepted.
  function showRefusal(text) {
    const e = $("login-error");
    e.textContent = text; e.hidden = !text;
    $("nick").setAttribute("aria-invalid", text ? "true" : "false");
  }

  function setSignedIn(on) {
    state.named = on;
    $("text").disabled = !on; $("send-button").disabled = !on;
    if (on) { setStatus("online as " + state.nick, "on"); showRefusal(""); }
  }

  // Phones: rooms and members are drawers (CSS decides whether the buttons show at all).
  function drawer(which) {
    document.body.classList.toggle("show-rooms", which === "rooms");
    document.body.classList.toggle("show-members", which === "members");
    $("menu-rooms").setAttribute("aria-expanded", String(which === "rooms"));
    $("menu-members").setAttribute("aria-expanded", String(which === "members"));
  }

  function fmtTime(ts) {
    const d = ts ? new Date(ts * 1000) : new Date();
    return d.toTimeString().slice(0, 5);
  }

  function addLine(roomName, cls, nick, text, ts) {
    const target = roomName ? room(roomName) : null;
    const entry = { cls, nick, text, ts };
    if (target) {
      target.lines.push(entry);
      if (target.lines.length > 1000) target.lines.shift();
      if (roomName !== state.current) { target.unread = true; renderRooms(); return; }
    } else if (state.current) {
      room(state.current).lines.push(entry);
    }
    appendLine(entry);
  }

  function appendLine(entry) {
    const log = $("log");
    const div = document.createElement("div");
    div.className = "line " + entry.cls;
    const t = document.createElement("span"); t.className = "time"; t.textContent = fmtTime(entry.ts);
    div.appendChild(t);
    if (entry.nick) {
      const n = document.createElement("span"); n.className = "nick"; n.textContent = entry.nick; div.appendChild(n);
    }
    div.appendChild(document.createTextNode(entry.text));  // text, never HTML: no injection
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 30;
    log.appendChild(div);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function renderRooms() {
    const nav = $("rooms"); nav.textContent = "";
    for (const r of state.rooms.values()) {
      if (!r.joined) continue;
      const b = document.createElement("button");
      b.textContent = r.name; b.type = "button";
      b.className = (r.name === state.current ? "current" : "") + (r.unread ? " unread" : "");
      b.onclick = () => { drawer(null); switchTo(r.name); };
      nav.appendChild(b);
    }
    $("menu-room").textContent = state.current || "rooms";
  }

  function renderMembers() {
    const ul = $("members"); ul.textContent = "";
    const r = state.current ? room(state.current) : null;
    $("room-name").textContent = r ? r.name : "";
    $("topic").textContent = r && r.topic ? "Topic: " + r.topic : "";
    $("member-count").textContent = r ? String(r.crowded ? r.count : r.members.size) : "";
    if (!r) return;
    if (r.crowded) {  // a crowded room: its count; the names only when asked (/who), as of then
      const li = document.createElement("li"); li.className = "count";
      li.textContent = r.count + " members" + (r.members.size ? " (names as of /who)" : " - list them");
      li.onclick = () => { drawer(null); state.whoAsked.add(r.name); send("/who " + r.name); };
      ul.appendChild(li);
    }
    const names = [...r.members].sort((a, b) => a.localeCompare(b));
    for (const n of names.slice(0, 500)) {
      const li = document.createElement("li"); li.textContent = n; li.title = n;
      li.onclick = () => { drawer(null); $("text").value = "/msg " + n + " "; $("text").focus(); };
      ul.appendChild(li);
    }
    if (names.length > 500) {
      const li = document.createElement("li"); li.className = "count"; li.textContent = "and " + (names.length - 500) + " more";
      ul.appendChild(li);
    }
  }

  function switchTo(name, ask = true) {
    state.current = name;
    const r = room(name); r.unread = false;
    const log = $("log"); log.textContent = "";
    for (const e of r.lines) appendLine(e);
    log.scrollTop = log.scrollHeight;
    renderRooms(); renderMembers();
    if (ask && state.ws && state.ws.readyState === 1) state.ws.send("/join " + name + " " + (state.lastSeq[name] || 0));
  }

  function saveSeq() { localStorage.setItem("socklab.seq", JSON.stringify(state.lastSeq)); }

  function handle(ev) {
    switch (ev.type) {
      case "HELLO":
        askNick(state.wantNick || state.nick);
        break;
      case "NICK":
        if (ev.old === "*" || ev.old === state.nick) {  // ours: accepted
          state.nick = ev.new; state.wantNick = ""; state.nickPending = false;
          localStorage.setItem("socklab.nick", ev.new);
          setSignedIn(true);
          if (ev.old === "*") {
            for (const name of state.wanted) send("/join " + name + (name in state.lastSeq ? " " + state.lastSeq[name] : ""));
          }
        }
        for (const r of state.rooms.values()) {
          if (r.members.delete(ev.old)) r.members.add(ev.new);
        }
        if (ev.old !== "*") addLine(state.current, "info", "", ev.old + " is now known as " + ev.new);
        renderMembers();
        break;
      case "JOIN": {
        const r = room(ev.room); r.members.add(ev.nick);
        if (ev.nick !== state.nick) r.crowded = false;  // per-nick lines again: the room is small
        if (ev.nick === state.nick) {
          r.joined = true;
          if (!state.wanted.includes(ev.room)) state.wanted.push(ev.room);
          if (state.switchOnJoin === ev.room) { state.switchOnJoin = null; switchTo(ev.room, false); }
          else if (!state.current || state.current === ev.room || !room(state.current).joined) state.current = ev.room;
          renderRooms();
        } else addLine(ev.room, "info", "", ev.nick + " joined " + ev.room);
        renderMembers();
        break;
      }
      case "PART": {
        const r = room(ev.room); r.members.delete(ev.nick);
        if (ev.nick !== state.nick) r.crowded = false;
        if (ev.nick === state.nick) {
          r.joined = false; state.wanted = state.wanted.filter((n) => n !== ev.room);
          const other = [...state.rooms.values()].find((x) => x.joined);
          if (state.current === ev.room && other) switchTo(other.name);
          renderRooms();
        } else addLine(ev.room, "info", "", ev.nick + " left " + ev.room + (ev.reason ? " (" + ev.reason + ")" : ""));
        renderMembers();
        break;
      }
      case "WHO": {  // asked for (/who): a snapshot; else the server's list (a join, or a crowded room shrank)
        const r = room(ev.room); r.members = new Set(ev.nicks); r.count = ev.nicks.length;
        if (!state.whoAsked.delete(ev.room)) r.crowded = false;
        renderMembers(); break;
      }
      case "PRESENCE": {  // a crowded room: the count, and how many came and went since the last one
        const r = room(ev.room);
        // the count alone (0 joined, 0 left) comes with every join: a rejoin's repeat is not logged again
        // (a 0/0 line may also tell renames: its sentence differs)
        if (ev.joined || ev.left || !r.counted.has(ev.text)) addLine(ev.room, "info", "", ev.text);
        if (!ev.joined && !ev.left) { if (r.counted.size >= 32) r.counted.clear(); r.counted.add(ev.text); }
        if (!r.crowded) r.members.clear();  // names are no longer kept up to date: /who asks for them
        r.crowded = true; r.count = ev.count;
        renderMembers(); break;
      }
      case "MSG": {
        const last = state.lastSeq[ev.room] || 0;
        if (ev.seq <= last && room(ev.room).lines.length) break;  // already shown (catch-up overlap)
        if (ev.seq > last) { state.lastSeq[ev.room] = ev.seq; saveSeq(); }
        if (ev.kind === "action") addLine(ev.room, "action", "", "* " + ev.nick + " " + ev.text, ev.ts);
        else addLine(ev.room, "msg", ev.nick + ":", ev.text, ev.ts);
        break;
      }
      case "PRIV": {
        const label = ev.sender === state.nick ? "→ " + ev.target + ":" : "← " + ev.sender + ":";
        addLine(null, "private", label, ev.text, ev.ts);
        break;
      }
      case "TOPIC": {  // sent on every join (and rejoin after a reconnect): shown when it is new
        const r = room(ev.room);
        if (r.topic !== ev.text) addLine(ev.room, "info", "", "topic: " + ev.text);
        r.topic = ev.text; renderMembers(); break;
      }
      case "ROOMS": addLine(null, "info", "", "rooms: " + ev.rooms.map((r) => r.name + " (" + r.members + ")").join(", ")); break;
      case "INFO": addLine(null, "info", "", ev.text); break;
      case "ERR":
        if (state.nickPending) {  // the answer to our /nick: refused
          state.nickPending = false;
          showRefusal("nick refused: " + ev.code + " " + ev.text + (ev.code === 400 || ev.code === 422
            ? ". A nick is one word: a letter or _, then up to 23 letters, digits, _ or -" : ""));
          if (!state.named) setStatus("not signed in", "off");
        }
        addLine(null, "error", "", ev.code + " " + ev.text);
        break;
      case "BYE": addLine(null, "info", "", "server: " + ev.text); break;
      case "SYNC": if (ev.seq > (state.lastSeq[ev.room] || 0)) { /* nothing missing that we know of */ } break;
      default: break;
    }
  }

  function send(text) { if (state.ws && state.ws.readyState === 1) state.ws.send(text); }

  function askNick(nick) {
    if (!nick) { setStatus("not signed in", "off"); showRefusal("choose a nick"); return; }
    state.nickPending = true;
    if (!state.named) setStatus("signing in as " + nick, "wait");
    send("/nick " + nick);
  }

  // Make `name` the current room: at once if already in it, else when the server confirms the join.
  function joinAndShow(name) {
    const r = state.rooms.get(name);
    if (r && r.joined) { switchTo(name); return; }
    state.switchOnJoin = name;
    send("/join " + name + (name in state.lastSeq ? " " + state.lastSeq[name] : ""));
  }

  function connect() {
    clearTimeout(state.timer);
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(proto + location.host + "/ws");
    state.ws = ws;
    setStatus("connecting", "wait");
    ws.onopen = () => { state.retry = 0; setStatus("connected, not signed in", "wait"); };
    ws.onmessage = (m) => { try { handle(JSON.parse(m.data)); } catch (e) { console.error(e); } };
    ws.onclose = (e) => {
      setSignedIn(false); state.nickPending = false;
      for (const r of state.rooms.values()) r.members.clear();
      renderMembers();
      if (!state.wantConnected) { setStatus("offline", "off"); return; }
      const delay = Math.min(5000, 250 * 2 ** state.retry++);
      setStatus("reconnecting in " + (delay / 1000).toFixed(1) + " s (" + (e.reason || e.code) + ")", "wait");
      state.timer = setTimeout(connect, delay);
    };
  }

  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    state.wantNick = $("nick").value.trim();
    const r = ($("room").value.trim() || "#lobby").toLowerCase();
    state.wantConnected = true;
    if (!(state.ws && state.ws.readyState === 1)) {
      if (!state.wanted.includes(r)) state.wanted.push(r);
      connect();
    } else if (!state.named) {
      if (!state.wanted.includes(r)) state.wanted.push(r);
      askNick(state.wantNick);  // the rooms are joined once a nick is accepted
    } else {
      if (state.wantNick && state.wantNick !== state.nick) askNick(state.wantNick);
      joinAndShow(r);
    }
  });

  $("send").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("text");
    let text = input.value;
    if (!text.trim()) return;
    const join = /^\/join\s+(#\S+)\s*$/i.exec(text.trim());
    const nick = /^\/nick\s+(\S+)\s*$/i.exec(text.trim());
    if (join) { joinAndShow(join[1].toLowerCase()); input.value = ""; return; }
    if (nick) { askNick(nick[1]); input.value = ""; return; }
    const who = /^\/who(?:\s+(#\S+))?\s*$/i.exec(text.trim());
    if (who && (who[1] || state.current)) state.whoAsked.add((who[1] || state.current).toLowerCase());
    if (!text.startsWith("/") && state.current) text = "/say " + state.current + " " + text;
    send(text);
    input.value = "";
  });

  $("menu-rooms").addEventListener("click", () => drawer(document.body.classList.contains("show-rooms") ? null : "rooms"));
  $("menu-members").addEventListener("click", () => drawer(document.body.classList.contains("show-members") ? null : "members"));
  $("backdrop").addEventListener("click", () => drawer(null));
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") drawer(null); });

  window.socklabChat = state;  // for tests and the curious
})();
