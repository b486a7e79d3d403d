// Helpers for the hostile-client tests (hostile-*.test.js): raw TCP and WebSocket framing, server-side
// socket state from /proc/net/tcp, RSS sampling, a panic watch on the server's stderr, a well-behaved
// "bystander" client that must keep receiving events during an attack, and a server spawned under a low
// file-descriptor limit.
//
// No side effects at import time (node --test also loads this file as a test file).

import net from "node:net";
import fs from "node:fs";
import crypto from "node:crypto";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { before, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { Server, BIN, JWT_SECRET, RS, sleep, uid, withTimeout } from "./harness.js";

// ---------------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------------

let keyCounter = 0;
/** A virtual key id unlikely to be used by anything else against the same server. */
export function freshKey(base = 700000) {
    keyCounter += 1;
    return String(base + (process.pid % 1000) * 100 + keyCounter);
}

export const bearer = (token) => ({ Authorization: `Bearer ${token}` });

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** Signs an HS256 JWT whose payload is exactly `payloadJson` (a string, so numbers stay literal). */
export function signRawJwt(payloadJson, secret = JWT_SECRET) {
    const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
    const payload = b64url(payloadJson);
    const sig = crypto.createHmac("sha256", secret).update(`${header}.${payload}`).digest();
    return `${header}.${payload}.${b64url(sig)}`;
}

export const nowSecs = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------------------------
// Panics and memory
// ---------------------------------------------------------------------------------------------

/**
 * Registers a before hook (call it after useServer) that watches the whole stderr of `server` for
 * "panicked at" (the harness only keeps a tail). `server.panics` collects the lines; a beforeEach hook
 * marks where each test starts, so that assertNoPanic blames a test only for its own panics.
 */
export function trackPanics(server) {
    before(() => attachPanicWatch(server));
    beforeEach(() => {
        server.panicMark = server.panics?.length ?? 0;
    });
}

export function attachPanicWatch(server) {
    server.panics = [];
    let carry = "";
    server.child.stderr.on("data", (chunk) => {
        const text = carry + chunk;
        const lines = text.split("\n");
        carry = lines.pop();
        if (carry.length > 4096) carry = carry.slice(-4096);
        for (const line of lines) if (line.includes("panicked at")) server.panics.push(line);
    });
}

/** Fails when the server panicked since the current test started (or ever, without trackPanics). */
export function assertNoPanic(server) {
    const lines = server.panics ? server.panics.slice(server.panicMark ?? 0) : [];
    const unwatched = !server.panics && server.stderr.includes("panicked at");
    assert.ok(!unwatched && lines.length === 0, `the server panicked:\n${lines.join("\n") || server.stderrTail(3000)}`);
}

/** The resident set size of `pid` in MB (from /proc/<pid>/status VmRSS). */
export function rssMb(pid) {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) / 1024 : NaN;
}

/** Samples the RSS of `pid` every `ms` until stop(); `max` is the largest seen. */
export function sampleRss(pid, ms = 100) {
    const s = { baseline: rssMb(pid), max: 0, samples: 0 };
    s.max = s.baseline;
    const t = setInterval(() => {
        try {
            const v = rssMb(pid);
            s.samples += 1;
            if (v > s.max) s.max = v;
        } catch {
            /* the process is gone */
        }
    }, ms);
    s.stop = () => {
        clearInterval(t);
        try {
            const v = rssMb(pid);
            if (v > s.max) s.max = v;
        } catch {
            /* ignore */
        }
        return s;
    };
    return s;
}

// ---------------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------------

/**
 * Connects a raw TCP socket to 127.0.0.1:port. Unless `paused`, everything received accumulates in
 * `socket.received`. `socket.closedAt` is set when the socket ends or closes; `socket.ended` resolves then.
 */
export async function tcpConnect(port, { paused = false } = {}) {
    const socket = net.connect({ port, host: "127.0.0.1" });
    socket.received = Buffer.alloc(0);
    socket.closedAt = null;
    socket.on("error", (err) => {
        socket.lastError = err;
    });
    socket.ended = new Promise((resolve) => {
        const done = () => {
            if (socket.closedAt === null) socket.closedAt = Date.now();
            resolve(socket.closedAt);
        };
        socket.on("end", done);
        socket.on("close", done);
    });
    socket.on("data", (chunk) => {
        socket.received = Buffer.concat([socket.received, chunk]);
    });
    if (paused) socket.pause();
    await withTimeout(once(socket, "connect"), 3000, `TCP connect to 127.0.0.1:${port}`);
    socket.connectedAt = Date.now();
    return socket;
}

const TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
};

/**
 * The state of the server's end of the TCP connection between 127.0.0.1:serverPort and the local
 * `clientPort`, read from /proc/net/tcp, or null when the server side is gone. Works while the client
 * does not read (a paused socket cannot see the server's FIN behind unread data).
 */
export function serverSideState(serverPort, clientPort) {
    if (!clientPort) return null;
    const hex = (p) => p.toString(16).toUpperCase().padStart(4, "0");
    const isLoop = (addr, port) => addr.endsWith(`0100007F:${hex(port)}`);
    for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
        let text;
        try {
            text = fs.readFileSync(file, "utf8");
        } catch {
            continue;
        }
        for (const line of text.split("\n").slice(1)) {
            const f = line.trim().split(/\s+/);
            if (f.length < 4) continue;
            if (isLoop(f[1], serverPort) && isLoop(f[2], clientPort)) return TCP_STATES[f[3]] ?? f[3];
        }
    }
    return null;
}

/**
 * Bytes queued in the kernel for the connection between 127.0.0.1:serverPort and `clientPort`:
 * {serverTx: unsent by the server, serverRx: received but not read by the server, clientRx: received but
 * not read by the client}, or null.
 */
export function tcpQueues(serverPort, clientPort) {
    if (!clientPort) return null;
    const hex = (p) => p.toString(16).toUpperCase().padStart(4, "0");
    const isLoop = (addr, port) => addr.endsWith(`0100007F:${hex(port)}`);
    const out = { serverTx: null, serverRx: null, clientRx: null };
    for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
        let text;
        try {
            text = fs.readFileSync(file, "utf8");
        } catch {
            continue;
        }
        for (const line of text.split("\n").slice(1)) {
            const f = line.trim().split(/\s+/);
            if (f.length < 5) continue;
            const [tx, rx] = f[4].split(":").map((h) => parseInt(h, 16));
            if (isLoop(f[1], serverPort) && isLoop(f[2], clientPort)) {
                out.serverTx = tx;
                out.serverRx = rx;
            }
            if (isLoop(f[1], clientPort) && isLoop(f[2], serverPort)) out.clientRx = rx;
        }
    }
    return out.serverTx === null && out.clientRx === null ? null : out;
}

/** True once the server has closed (or begun closing) its end of `socket`, even if the client is paused. */
export function closedByServer(serverPort, socket) {
    if (socket.closedAt !== null && socket.closedAt !== undefined) return true;
    if (socket.destroyed) return true;
    const port = socket.localPort;
    if (!port) return true;
    const st = serverSideState(serverPort, port);
    return st !== "ESTABLISHED";
}

/** Polls until the server closed `socket`; returns the time it was noticed, or null after `ms`. */
export async function waitServerClose(serverPort, socket, ms) {
    const deadline = Date.now() + ms;
    for (;;) {
        if (closedByServer(serverPort, socket)) return Date.now();
        if (Date.now() > deadline) return null;
        await sleep(50);
    }
}

/** Writes `data` and waits for it to be flushed, at most `ms` (returns false on timeout or error). */
export async function writeFlushed(socket, data, ms = 3000) {
    return new Promise((resolve) => {
        const t = setTimeout(() => resolve(false), ms);
        socket.write(data, (err) => {
            clearTimeout(t);
            resolve(!err);
        });
    });
}

/** The HTTP status of the first response in `buf`, or null. */
export function httpStatus(buf) {
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(buf.toString("latin1"));
    return m ? Number(m[1]) : null;
}

/**
 * One raw HTTP exchange: writes `request`, waits for a complete response head (and `Content-Length` body),
 * the socket's close, or `ms`. Returns {status, text, closed, ms, socket}.
 */
export async function rawHttp(port, request, { ms = 3000, keepOpen = false } = {}) {
    const started = Date.now();
    let socket;
    try {
        socket = await tcpConnect(port);
    } catch (err) {
        return { status: null, text: "", closed: true, error: err, ms: Date.now() - started };
    }
    socket.write(request);
    const deadline = started + ms;
    for (;;) {
        const text = socket.received.toString("latin1");
        const headEnd = text.indexOf("\r\n\r\n");
        if (headEnd >= 0) {
            const m = /\r\ncontent-length:\s*(\d+)/i.exec(text.slice(0, headEnd));
            const need = m ? headEnd + 4 + Number(m[1]) : headEnd + 4;
            if (text.length >= need) break;
        }
        if (socket.closedAt) break;
        if (Date.now() > deadline) break;
        await sleep(10);
    }
    const result = {
        status: httpStatus(socket.received),
        text: socket.received.toString("latin1"),
        closed: socket.closedAt !== null,
        ms: Date.now() - started,
        socket,
    };
    if (!keepOpen) socket.destroy();
    return result;
}

/** fetch with a deadline: resolves {status, body, ms} or {error, ms}; never hangs past `ms`. */
export async function timedFetch(url, init = {}, ms = 3000) {
    const started = Date.now();
    try {
        const res = await fetch(url, { ...init, signal: AbortSignal.timeout(ms) });
        const body = await res.text();
        return { status: res.status, body, ms: Date.now() - started };
    } catch (error) {
        return { status: null, error, ms: Date.now() - started };
    }
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket framing over node:net
// ---------------------------------------------------------------------------------------------

/** A client frame (masked unless mask: false). `len` overrides the declared length (for lies). */
export function wsFrame(opcode, payload = Buffer.alloc(0), { fin = true, mask = true, len } = {}) {
    payload = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
    const declared = len ?? BigInt(payload.length);
    const parts = [];
    const b0 = (fin ? 0x80 : 0) | opcode;
    const maskBit = mask ? 0x80 : 0;
    const n = BigInt(declared);
    if (n < 126n) parts.push(Buffer.from([b0, maskBit | Number(n)]));
    else if (n < 65536n) {
        const h = Buffer.alloc(4);
        h[0] = b0;
        h[1] = maskBit | 126;
        h.writeUInt16BE(Number(n), 2);
        parts.push(h);
    } else {
        const h = Buffer.alloc(10);
        h[0] = b0;
        h[1] = maskBit | 127;
        h.writeBigUInt64BE(n, 2);
        parts.push(h);
    }
    if (mask) {
        const key = crypto.randomBytes(4);
        const body = Buffer.from(payload);
        for (let i = 0; i < body.length; i++) body[i] ^= key[i & 3];
        parts.push(key, body);
    } else parts.push(payload);
    return Buffer.concat(parts);
}

/** An empty masked Ping (6 bytes). */
export const EMPTY_PING = Buffer.from([0x89, 0x80, 0x11, 0x22, 0x33, 0x44]);

/** Parses the server's (unmasked) frames from `buf`; returns {frames: [{opcode, fin, payload}], rest}. */
export function parseServerFrames(buf) {
    const frames = [];
    let i = 0;
    for (;;) {
        if (buf.length - i < 2) break;
        const b0 = buf[i];
        const b1 = buf[i + 1];
        let len = b1 & 0x7f;
        let off = i + 2;
        if (len === 126) {
            if (buf.length - i < 4) break;
            len = buf.readUInt16BE(i + 2);
            off = i + 4;
        } else if (len === 127) {
            if (buf.length - i < 10) break;
            len = Number(buf.readBigUInt64BE(i + 2));
            off = i + 10;
        }
        if (b1 & 0x80) off += 4; // a server must not mask, but parse anyway
        if (buf.length < off + len) break;
        frames.push({ opcode: b0 & 0x0f, fin: (b0 & 0x80) !== 0, payload: buf.subarray(off, off + len) });
        i = off + len;
    }
    return { frames, rest: buf.subarray(i) };
}

/** The close code of the first Close frame in `frames`, 1005 for an empty one, or null without one. */
export function closeCodeOf(frames) {
    const c = frames.find((f) => f.opcode === 0x8);
    if (!c) return null;
    return c.payload.length >= 2 ? c.payload.readUInt16BE(0) : 1005;
}

/**
 * Opens a raw TCP socket and sends a WebSocket upgrade for `path` (with `query`); resolves with
 * {socket, status, head, body()} once the response head arrived. body() is what followed the head.
 */
export async function rawUpgrade(port, path, { headers = {}, paused = false } = {}) {
    const socket = await tcpConnect(port);
    const key = crypto.randomBytes(16).toString("base64");
    const extra = Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}\r\n`)
        .join("");
    socket.write(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
            `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n${extra}\r\n`,
    );
    const deadline = Date.now() + 5000;
    while (socket.received.indexOf("\r\n\r\n") < 0) {
        if (socket.closedAt) break;
        if (Date.now() > deadline) throw new Error(`no upgrade response for ${path}`);
        await sleep(5);
    }
    const at = socket.received.indexOf("\r\n\r\n");
    const head = at >= 0 ? socket.received.subarray(0, at).toString("latin1") : socket.received.toString("latin1");
    const headLen = at >= 0 ? at + 4 : socket.received.length;
    if (paused) socket.pause();
    return {
        socket,
        status: httpStatus(socket.received),
        head,
        body: () => socket.received.subarray(headLen),
        frames: () => parseServerFrames(socket.received.subarray(headLen)).frames,
    };
}

/** rawUpgrade, then a JSON handshake in a masked text frame; resolves once `{}` + RS came back. */
export async function rawWsJson(port, path, { protocol = "json", version = 1, headers = {} } = {}) {
    const up = await rawUpgrade(port, path, { headers });
    assert.equal(up.status, 101, `upgrade of ${path}: ${up.head}`);
    up.socket.write(wsFrame(0x1, JSON.stringify({ protocol, version }) + RS));
    const deadline = Date.now() + 5000;
    for (;;) {
        const text = Buffer.concat(up.frames().map((f) => f.payload)).toString("utf8");
        if (text.includes(RS)) {
            assert.equal(text.slice(0, text.indexOf(RS)), "{}", "handshake reply");
            return up;
        }
        if (up.socket.closedAt || Date.now() > deadline) throw new Error(`no handshake reply: ${JSON.stringify(text)}`);
        await sleep(5);
    }
}

/** Waits for `up.socket` to be closed by the server; returns {ms, code} (code of its Close frame, or null). */
export async function waitUpgradeClosed(up, ms) {
    const started = Date.now();
    await withTimeout(up.socket.ended, ms, "waiting for the server to close the socket");
    return { ms: Date.now() - started, code: closeCodeOf(up.frames()) };
}

// ---------------------------------------------------------------------------------------------
// A well-behaved bystander
// ---------------------------------------------------------------------------------------------

/**
 * An official client of its own key subscribed to one task, fed one TaskProgress every `everyMs` by a
 * publisher loop until stop(). stop() returns {published, received}; check() publishes one more event and
 * resolves once it arrived (rejects after 5 s).
 */
export async function startBystander(server, { everyMs = 200 } = {}) {
    const vkey = freshKey(800000);
    const token = await server.mintToken({ vkey });
    const c = await server.connect({ token });
    const taskId = uid("bystander");
    await c.invoke("SubscribeToTask", taskId);
    const received = [];
    const waiters = [];
    c.on("TaskProgress", (id, pct, message) => {
        if (id !== taskId) return;
        received.push({ message, at: Date.now() });
        for (const w of waiters.splice(0)) w();
    });
    let seq = 0;
    let running = true;
    const published = [];
    const publishOne = async () => {
        seq += 1;
        const message = `m${seq}`;
        await server.publish("tasks", `vkey.${vkey}.TaskProgress`, { taskId, taskType: "bystander", percentComplete: 1, message });
        published.push({ message, at: Date.now() });
        return message;
    };
    const loop = (async () => {
        while (running) {
            try {
                await publishOne();
            } catch (err) {
                published.push({ error: err.message, at: Date.now() });
            }
            await sleep(everyMs);
        }
    })();
    return {
        connection: c,
        received,
        published,
        async stop() {
            running = false;
            await loop;
            return { published: published.length, received: received.length };
        },
        async check(ms = 5000) {
            const message = await publishOne();
            const deadline = Date.now() + ms;
            while (!received.some((r) => r.message === message)) {
                if (Date.now() > deadline) {
                    throw new Error(`the bystander did not receive ${message} within ${ms} ms (state ${c.state})`);
                }
                await new Promise((r) => {
                    waiters.push(r);
                    setTimeout(r, 100);
                });
            }
        },
        async close() {
            running = false;
            await loop;
            try {
                await withTimeout(c.stop(), 3000, "bystander stop");
            } catch {
                /* ignore */
            }
            server.connections.delete(c);
        },
    };
}

// ---------------------------------------------------------------------------------------------
// A server spawned through a shell (for `ulimit -n`)
// ---------------------------------------------------------------------------------------------

/** Like the harness's Server, but started as `sh -c '<prefix>; exec "$BIN" serve'`. */
export class ShellServer extends Server {
    constructor(envOverrides = {}, prefix = "") {
        super(envOverrides);
        this.prefix = prefix;
    }

    async start() {
        const child = spawn("sh", ["-c", `${this.prefix}; exec "$HOSTILE_SERVER_BIN" serve`], {
            env: { ...this.env, HOSTILE_SERVER_BIN: BIN },
            stdio: ["ignore", "pipe", "pipe"],
        });
        this.child = child;
        this.exited = once(child, "exit").then(([code, signal]) => ({ code, signal }));
        child.stderr.setEncoding("utf8");
        child.stderr.on("data", (chunk) => {
            this.stderr += chunk;
            if (this.stderr.length > 64 * 1024) this.stderr = this.stderr.slice(-64 * 1024);
        });
        child.stdout.setEncoding("utf8");
        const listening = new Promise((resolve, reject) => {
            let buffered = "";
            child.stdout.on("data", (chunk) => {
                this.stdout += chunk;
                buffered += chunk;
                let nl;
                while ((nl = buffered.indexOf("\n")) >= 0) {
                    const line = buffered.slice(0, nl).replace(/\r$/, "");
                    buffered = buffered.slice(nl + 1);
                    const m = /^hubcast listening on (http:\/\/127\.0\.0\.1:(\d+))$/.exec(line);
                    if (m) resolve({ url: m[1], port: Number(m[2]) });
                }
            });
            child.on("exit", (code, signal) =>
                reject(new Error(`hubcast exited before listening (code ${code}, signal ${signal})\n${this.stderrTail()}`)),
            );
        });
        try {
            const { url, port } = await withTimeout(listening, 20_000, "hubcast (shell) listening");
            this.url = url;
            this.port = port;
            this.wsUrl = url.replace(/^http/, "ws");
        } catch (err) {
            await this.stop();
            throw err;
        }
        attachPanicWatch(this);
        return this;
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded official-client calls (a server bug must fail a test, not hang it)
// ---------------------------------------------------------------------------------------------

/** connection.invoke, failing after `ms` with the method's name. */
export function invoke(connection, method, ...args) {
    return withTimeout(connection.invoke(method, ...args), 5000, `invoke ${method}`);
}

/** connection.stop, bounded. */
export async function stop(connection) {
    try {
        await withTimeout(connection.stop(), 5000, "connection.stop");
    } catch {
        /* the server's problem shows elsewhere */
    }
}
