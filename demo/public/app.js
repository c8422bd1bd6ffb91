// The browser demo's page: a Socket.IO client of each of the three servers, and a control channel to
// the demo (live panels, fault buttons). Plain JavaScript, served as is; `io` comes from
// /socket.io/socket.io.min.js of the demo's own Socket.IO server.
/* global io */
"use strict"

const $ = (root, selector) => root.querySelector(selector)
const columns = new Map() // server number -> column
const control = io({ transports: ["websocket"] })

const time = (at) => new Date(at).toLocaleTimeString([], { hour12: false })

const logEvent = (text, at = Date.now()) => {
  const li = document.createElement("li")
  const stamp = document.createElement("time")
  stamp.textContent = time(at)
  li.append(stamp, " ", text)
  const events = document.getElementById("events")
  events.prepend(li)
  while (events.children.length > 200) events.lastChild.remove()
}

/** Sends a fault request; the button is disabled until the demo answers. */
const fault = (button, request) => {
  button.disabled = true
  control.timeout(20_000).emit("fault", request, (error, reply) => {
    button.disabled = false
    if (error) logEvent(`no answer from the demo: ${error.message}`)
    else if (!reply.ok) logEvent(`refused: ${reply.text}`)
  })
}

/** One column: the server's panel and a client of it. */
class Column {
  constructor(number) {
    this.number = number
    this.port = undefined
    this.socket = undefined
    this.rooms = []
    const fragment = document.getElementById("column").content.cloneNode(true)
    this.root = fragment.querySelector(".column")
    this.root.id = `server-${number}`
    this.server = $(this.root, ".server")
    this.client = $(this.root, ".client")
    this.client.id = `client-${number}`
    for (const span of this.root.querySelectorAll(".number")) span.textContent = String(number)
    document.getElementById("columns").append(fragment)

    $(this.server, ".kill-listen").onclick = (e) =>
      fault(e.currentTarget, { kind: "kill-listen", server: number })
    $(this.server, ".stop").onclick = (e) =>
      fault(e.currentTarget, { kind: "stop", server: number })
    $(this.server, ".start").onclick = (e) =>
      fault(e.currentTarget, { kind: "start", server: number })
    $(this.client, ".join-form").onsubmit = (e) => {
      e.preventDefault()
      const input = $(this.client, ".room-input")
      const room = input.value.trim()
      if (room === "" || this.socket === undefined) return
      this.socket.emit("join", room, (reply) => this.roomsReply(reply))
      input.value = ""
    }
    $(this.client, ".chat-form").onsubmit = (e) => {
      e.preventDefault()
      const input = $(this.client, ".chat-input")
      const text = input.value.trim()
      if (text === "" || this.socket === undefined) return
      const room = $(this.client, ".target").value || null
      // Sent at once when connected, else buffered by the client until it reconnects.
      this.socket.emit("chat", { text, room })
      input.value = ""
    }
  }

  /** Connects the client once the server's port is known (the same port after a restart). */
  connect(port) {
    if (this.socket !== undefined) return
    this.port = port
    const url = `${location.protocol}//${location.hostname}:${port}`
    const socket = io(url, {
      transports: ["websocket"],
      auth: { name: `client ${this.number}` },
      reconnectionDelayMax: 2000,
    })
    this.socket = socket
    // Socket.IO hands a recovered client the packets it missed before its "connect" event:
    // chat messages that arrive while `missed` is counting are those.
    let missed = 0
    let counting = false
    socket.on("disconnect", () => {
      missed = 0
      counting = true
    })
    socket.on("connect", () => {
      counting = false
      this.setConn("connected", `connected · ${socket.id}`)
      if (socket.recovered) {
        this.client.dataset.recovered = "true"
        $(this.client, ".recovered").textContent =
          `session recovered: same id, rooms kept, ${missed} missed message(s) delivered`
        this.system(`reconnected: session recovered, ${missed} missed message(s) above`)
      } else {
        delete this.client.dataset.recovered
        $(this.client, ".recovered").textContent = ""
      }
    })
    socket.on("welcome", ({ rooms }) => this.setRooms(rooms))
    socket.on("disconnect", (reason) => {
      this.setConn("disconnected", `disconnected (${reason}) · reconnecting…`)
      this.system(`disconnected: ${reason}`)
    })
    socket.on("connect_error", () => {
      if (!socket.connected) this.setConn("disconnected", "server unreachable · retrying…")
    })
    socket.on("chat", (message) => {
      if (counting) missed++
      this.append(message, counting)
    })
  }

  setConn(state, text) {
    this.client.dataset.state = state
    $(this.client, ".conn").textContent = text
  }

  roomsReply(reply) {
    if (Array.isArray(reply)) this.setRooms(reply)
    else if (reply && reply.error) this.system(reply.error)
  }

  setRooms(rooms) {
    this.rooms = rooms
    const list = $(this.client, ".rooms")
    list.replaceChildren(
      ...rooms.map((room) => {
        const li = document.createElement("li")
        li.dataset.room = room
        li.append(room)
        const leave = document.createElement("button")
        leave.type = "button"
        leave.className = "leave"
        leave.title = `Leave ${room}`
        leave.textContent = "×"
        leave.onclick = () => this.socket.emit("leave", room, (reply) => this.roomsReply(reply))
        li.append(leave)
        return li
      }),
    )
    const target = $(this.client, ".target")
    const chosen = target.value
    target.replaceChildren(
      new Option("everyone", ""),
      ...rooms.map((room) => new Option(`room ${room}`, room)),
    )
    target.value = rooms.includes(chosen) ? chosen : ""
  }

  append({ text, room, from, server }, missed) {
    const li = document.createElement("li")
    li.className = missed ? "message missed" : "message"
    if (room) {
      const tag = document.createElement("span")
      tag.className = "room"
      tag.textContent = `#${room}`
      li.append(tag)
    }
    const body = document.createElement("span")
    body.className = "text"
    body.textContent = text
    const meta = document.createElement("small")
    meta.textContent = `${from} via server ${server}${missed ? " · missed, recovered" : ""}`
    li.append(body, meta)
    this.appendLine(li)
  }

  system(text) {
    const li = document.createElement("li")
    li.className = "system"
    li.textContent = text
    this.appendLine(li)
  }

  appendLine(li) {
    const log = $(this.client, ".log")
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4
    log.append(li)
    while (log.children.length > 300) log.firstChild.remove()
    if (atBottom) log.scrollTop = log.scrollHeight
  }

  /** The server's live panel. */
  show(view) {
    const state = $(this.server, ".state")
    state.dataset.state = view.state
    state.textContent = view.state
    $(this.server, ".port").textContent = view.port ? `:${view.port}` : ""
    $(this.server, ".stop").hidden = view.state === "stopped"
    $(this.server, ".start").hidden = view.state !== "stopped"
    $(this.server, ".kill-listen").disabled = view.state !== "running"
    if (view.port !== undefined) this.connect(view.port)
    const s = view.status
    const set = (selector, text) => ($(this.server, selector).textContent = text)
    const listen = $(this.server, ".listen")
    if (s === undefined) {
      for (const selector of [".members", ".out", ".in", ".drops", ".recovery", ".clients"])
        set(selector, "–")
      listen.textContent = view.state === "stopped" ? "– (process stopped)" : "–"
      listen.dataset.listening = "none"
      delete listen.dataset.pid
      return
    }
    set(".members", `${s.members} server${s.members === 1 ? "" : "s"}`)
    set(".out", `${s.sentPerSecond.toFixed(1)} /s`)
    set(".in", `${s.receivedPerSecond.toFixed(1)} /s`)
    set(".drops", String(s.listenDrops))
    set(".recovery", s.recovery ? "on" : "off")
    set(".clients", String(s.clients))
    listen.dataset.listening = String(s.listening)
    if (s.backendPid === undefined) delete listen.dataset.pid
    else listen.dataset.pid = String(s.backendPid)
    listen.textContent = s.listening
      ? `● listening · backend ${s.backendPid}`
      : s.backendPid === undefined
        ? "○ down · reconnecting"
        : `○ connected (backend ${s.backendPid}), LISTEN pending`
  }
}

for (const number of [1, 2, 3]) columns.set(number, new Column(number))

control.on("setup", (setup) => {
  document.getElementById("database").textContent = `PostgreSQL: ${setup.database}.`
  const freeze = document.getElementById("freeze")
  freeze.disabled = !setup.freeze.available
  freeze.title = setup.freeze.available
    ? `Freeze PostgreSQL for 5 s (${setup.freeze.reason})`
    : `Not available: ${setup.freeze.reason}`
  freeze.onclick = () => fault(freeze, { kind: "freeze" })
  freeze.dataset.available = String(setup.freeze.available)
})

control.on("status", ({ servers, frozen }) => {
  for (const view of servers) columns.get(view.number)?.show(view)
  document.getElementById("frozen").hidden = !frozen
  const freeze = document.getElementById("freeze")
  if (freeze.dataset.available === "true") freeze.disabled = frozen
})

control.on("log", ({ at, text }) => logEvent(text, at))
control.on("disconnect", () =>
  logEvent("lost the demo's control channel (is npm start still running?)"),
)
control.on("connect", () => logEvent("connected to the demo"))
