// telchat's web page: xterm.js, and a small telnet client talking to the server over a
// WebSocket (subprotocol telnet.mudstandards.org: every binary message is telnet bytes).
// It answers negotiation as a character-mode xterm would: the server then echoes and edits
// the input line itself, exactly as for a telnet terminal.
"use strict";

(function () {
  const IAC = 255, DONT = 254, DO = 253, WONT = 252, WILL = 251, SB = 250, SE = 240;
  const ECHO = 1, SGA = 3, TTYPE = 24, NAWS = 31;
  const TTYPE_IS = 0, TTYPE_SEND = 1;
  const TERM_TYPE = "xterm-256color";
  // Options we perform (answer DO with WILL) and options we let the server perform (WILL -> DO).
  const OURS = new Set([TTYPE, NAWS]);
  const THEIRS = new Set([ECHO, SGA]);
  const BACKOFF_FIRST = 1000, BACKOFF_MAX = 30000;

  const statusLine = document.getElementById("status");
  // reflowCursorLine: narrowed, the server erases the rows a reflowing terminal wrapped its
  // input line onto (as tmux, VTE and kitty do); xterm.js leaves that line unwrapped by
  // default, and the erase would take lines of chat above it instead.
  const term = new Terminal({
    screenReaderMode: true,
    cursorBlink: true,
    convertEol: false,
    scrollback: 5000,
    reflowCursorLine: true,
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  term.focus();

  const encoder = new TextEncoder();
  let socket = null;
  let backoff = BACKOFF_FIRST;
  let parser = null;

  function setStatus(state, text) {
    statusLine.dataset.state = state;
    statusLine.textContent = text;
  }

  // The telnet byte stream in from the server: text to the terminal, commands answered.
  class TelnetParser {
    constructor(send) {
      this.send = send;
      this.state = "data";
      this.command = 0;
      this.sub = [];
      this.ours = new Set(); // options we have said WILL to
      this.theirs = new Set(); // options we have said DO to
    }

    feed(bytes) {
      const text = [];
      for (const b of bytes) {
        switch (this.state) {
          case "data":
            if (b === IAC) this.state = "iac"; else text.push(b);
            break;
          case "iac":
            if (b === IAC) { text.push(IAC); this.state = "data"; }
            else if (b === SB) { this.sub = []; this.state = "sb"; }
            else if (b >= WILL && b <= DONT) { this.command = b; this.state = "option"; }
            else this.state = "data"; // GA, EOR, NOP...: nothing to do
            break;
          case "option":
            this.negotiate(this.command, b);
            this.state = "data";
            break;
          case "sb":
            if (b === IAC) this.state = "sb-iac"; else this.sub.push(b);
            break;
          case "sb-iac":
            if (b === SE) { this.subnegotiation(this.sub); this.state = "data"; }
            else { this.sub.push(b); this.state = "sb"; } // IAC IAC inside: one 0xFF
            break;
        }
      }
      if (text.length) term.write(new Uint8Array(text));
    }

    // Answer only changes of state, so that two peers never loop on one option.
    negotiate(command, option) {
      if (command === DO) {
        if (!OURS.has(option)) { this.reply(WONT, option); return; }
        if (this.ours.has(option)) return;
        this.ours.add(option);
        this.reply(WILL, option);
        if (option === NAWS) this.sendSize();
      } else if (command === DONT) {
        if (this.ours.delete(option)) this.reply(WONT, option);
      } else if (command === WILL) {
        if (!THEIRS.has(option)) { this.reply(DONT, option); return; }
        if (this.theirs.has(option)) return;
        this.theirs.add(option);
        this.reply(DO, option);
      } else if (this.theirs.delete(option)) { // WONT
        this.reply(DONT, option);
      }
    }

    subnegotiation(data) {
      if (data[0] === TTYPE && data[1] === TTYPE_SEND) {
        this.send([IAC, SB, TTYPE, TTYPE_IS, ...encoder.encode(TERM_TYPE), IAC, SE]);
      }
    }

    reply(command, option) {
      this.send([IAC, command, option]);
    }

    sendSize() {
      if (!this.ours.has(NAWS)) return;
      const size = [term.cols >> 8, term.cols & 255, term.rows >> 8, term.rows & 255];
      this.send([IAC, SB, NAWS, ...escapeIac(size), IAC, SE]);
    }
  }

  function escapeIac(bytes) {
    const out = [];
    for (const b of bytes) { out.push(b); if (b === IAC) out.push(IAC); }
    return out;
  }

  function sendBytes(bytes) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(new Uint8Array(bytes));
  }

  // What the person types: UTF-8, 0xFF doubled, and Enter as telnet's CR NUL.
  function sendText(text) {
    const bytes = escapeIac(encoder.encode(text.replace(/\r(?!\n)/g, "\r\0")));
    sendBytes(bytes);
    // The first line sent: the "type login" hint has done its work.
    if (text.includes("\r") && statusLine.dataset.state === "open") setStatus("open", "Connected.");
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/telnet`, ["telnet.mudstandards.org"]);
    socket.binaryType = "arraybuffer";
    parser = new TelnetParser(sendBytes);
    setStatus("connecting", "Connecting…");
    socket.onopen = () => {
      backoff = BACKOFF_FIRST;
      setStatus("open", "Connected. Type “login yournick”, then “join room”.");
    };
    socket.onmessage = (event) => parser.feed(new Uint8Array(event.data));
    socket.onclose = (event) => {
      const why = event.reason ? `: ${event.reason}` : event.code === 1009 ? ": message too big" : "";
      const seconds = Math.round(backoff / 1000);
      setStatus("closed", `Disconnected${why}. Reconnecting in ${seconds} s…`);
      term.write(`\r\n*** Disconnected${why}; reconnecting in ${seconds} s.\r\n`);
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, BACKOFF_MAX);
    };
  }

  term.onData(sendText);
  // Text inserted with no key typed (an emoji picker, dictation, a phone keyboard's
  // suggestion): xterm.js leaves it to its textarea in screen-reader mode, and it never
  // reached the server. What a key types, xterm.js sends itself.
  let keyDown = false;
  const typed = term.textarea;
  typed.addEventListener("keydown", () => { keyDown = true; });
  typed.addEventListener("keyup", () => { keyDown = false; });
  typed.addEventListener("input", (event) => {
    if (event.inputType === "insertText" && event.data && !keyDown && !event.isComposing) {
      sendText(event.data);
      typed.value = "";
    }
  });
  term.onResize(() => parser && parser.sendSize());
  new ResizeObserver(() => fit.fit()).observe(document.getElementById("terminal"));

  document.getElementById("line").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("line-input");
    sendText(input.value + "\r");
    input.value = "";
  });

  connect();
})();
