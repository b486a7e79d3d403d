// Test harness for the hubcast integration tests.
//
// One server per test file: call `useServer()` at the top level of a *.test.js file. It registers
// node:test hooks that spawn `hubcast serve` before the file's tests and kill it afterwards, and
// returns an object whose fields (url, port, ...) are filled in once the server is listening.
//
// This module must not have side effects at import time: `node --test test/` also loads it as a
// test file (everything under a `test/` directory matches the runner's default patterns).

import { spawn, execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";
import crypto from "node:crypto";
import { once } from "node:events";
import { before, after, afterEach } from "node:test";
import WebSocket from "ws";
import {
    HubConnectionBuilder,
    HubConnectionState,
    HttpTransportType,
    LogLevel,
    NullLogger,
} from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";

const here = path.dirname(fileURLToPath(import.meta.url));
const jsRoot = path.resolve(here, "..");

export const BIN = process.env.SERVER_BIN
    ? path.resolve(jsRoot, process.env.SERVER_BIN)
    : path.resolve(jsRoot, "../../target/debug/hubcast");

export const JWT_SECRET = "test-secret-0123456789abcdef0123456789";
export const MASTER_KEY = "test-master-key";
export const RS = "\x1e";

export const DEFAULT_ENV = {
    HUBCAST_LISTEN: "127.0.0.1:0",
    HUBCAST_AUTH__JWT_SECRET: JWT_SECRET,
    HUBCAST_AUTH__MASTER_KEY: MASTER_KEY,
    HUBCAST_SIGNALR__KEEP_ALIVE_INTERVAL: "1s",
    HUBCAST_SIGNALR__CLIENT_TIMEOUT: "30s",
    HUBCAST_SIGNALR__HANDSHAKE_TIMEOUT: "2s",
    HUBCAST_LIMITS__MAX_MESSAGE_SIZE: "32768",
    RUST_LOG: "warn",
    NO_COLOR: "1", // plain server logs in test output
};

const START_TIMEOUT_MS = 20_000;
const STDERR_KEEP = 64 * 1024;

/**
 * TEST_TRANSPORT=sse|longpolling reruns the hub tests with every official-client connection forced onto
 * that transport (tests that pick a transport or skip negotiation keep theirs).
 */
export const FORCED_TRANSPORT = {
    sse: HttpTransportType.ServerSentEvents,
    longpolling: HttpTransportType.LongPolling,
    websockets: HttpTransportType.WebSockets,
}[process.env.TEST_TRANSPORT ?? ""];
if (process.env.TEST_TRANSPORT && FORCED_TRANSPORT === undefined) {
    throw new Error(`TEST_TRANSPORT must be sse, longpolling or websockets, not ${process.env.TEST_TRANSPORT}`);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A fresh id that matches `[A-Za-z0-9_:-]{1,128}`, unique per call. */
let idCounter = 0;
export function uid(prefix = "t") {
    idCounter += 1;
    return `${prefix}-${process.pid}-${idCounter}-${crypto.randomBytes(3).toString("hex")}`;
}

/** Rejects after `ms` with `message`, unless `promise` settles first. */
export function withTimeout(promise, ms, message) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${message} (timed out after ${ms} ms)`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

export class Server {
    constructor(envOverrides = {}) {
        this.env = { ...process.env, ...DEFAULT_ENV, ...envOverrides };
        this.stderr = "";
        this.stdout = "";
        this.child = null;
        this.port = null;
        this.url = null;
        this.exited = null;
        this.connections = new Set();
        this.rawClients = new Set();
    }

    stderrTail(n = 4000) {
        return this.stderr.length > n ? "..." + this.stderr.slice(-n) : this.stderr;
    }

    async start() {
        const child = spawn(BIN, ["serve"], { env: this.env, stdio: ["ignore", "pipe", "pipe"] });
        this.child = child;
        this.exited = once(child, "exit").then(([code, signal]) => ({ code, signal }));
        child.stderr.setEncoding("utf8");
        child.stderr.on("data", (chunk) => {
            this.stderr += chunk;
            if (this.stderr.length > STDERR_KEEP) this.stderr = this.stderr.slice(-STDERR_KEEP);
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
            child.on("error", (err) => reject(new Error(`failed to spawn ${BIN}: ${err.message}`)));
            child.on("exit", (code, signal) =>
                reject(
                    new Error(
                        `hubcast exited before listening (code ${code}, signal ${signal})\n` +
                            `stdout:\n${this.stdout}\nstderr:\n${this.stderrTail()}`,
                    ),
                ),
            );
        });

        let timer;
        const timeout = new Promise((_, reject) => {
            timer = setTimeout(
                () =>
                    reject(
                        new Error(
                            `hubcast did not print "hubcast listening on ..." within ${START_TIMEOUT_MS} ms\n` +
                                `stdout:\n${this.stdout}\nstderr:\n${this.stderrTail()}`,
                        ),
                    ),
                START_TIMEOUT_MS,
            );
        });
        try {
            const { url, port } = await Promise.race([listening, timeout]);
            this.url = url;
            this.port = port;
            this.wsUrl = url.replace(/^http/, "ws");
        } catch (err) {
            await this.stop();
            throw err;
        } finally {
            clearTimeout(timer);
        }
        return this;
    }

    /** True while the server process is running. */
    get alive() {
        return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
    }

    async stop() {
        for (const c of this.connections) {
            try {
                await withTimeout(c.stop(), 3000, "connection.stop");
            } catch {
                /* ignore */
            }
        }
        this.connections.clear();
        for (const r of this.rawClients) r.terminate();
        this.rawClients.clear();
        const child = this.child;
        if (!child || child.exitCode !== null || child.signalCode !== null) return;
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 5000);
        await this.exited;
        clearTimeout(t);
    }

    hubUrl(hub = "tasks") {
        return `${this.url}/hubs/${hub}`;
    }

    wsHubUrl(hub = "tasks", query = "") {
        return `${this.wsUrl}/hubs/${hub}${query ? "?" + query : ""}`;
    }

    // --- CLI helpers --------------------------------------------------------------------------

    /**
     * Runs `hubcast token --vkey ID [--ttl T] [--max-connections N]` (or `hubcast token --admin`)
     * and returns the token.
     */
    mintToken({ vkey = "7", ttl, admin = false, maxConnections } = {}) {
        const args = ["token"];
        if (admin) args.push("--admin");
        else if (vkey !== undefined && vkey !== null) args.push("--vkey", String(vkey));
        if (ttl) args.push("--ttl", ttl);
        if (maxConnections !== undefined) args.push("--max-connections", String(maxConnections));
        return new Promise((resolve, reject) => {
            execFile(BIN, args, { env: this.env, timeout: 15_000 }, (err, stdout, stderr) => {
                if (err) {
                    reject(new Error(`hubcast ${args.join(" ")} failed: ${err.message}\nstderr:\n${stderr}`));
                    return;
                }
                const token = stdout.trim();
                if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(token)) {
                    reject(new Error(`hubcast ${args.join(" ")} printed something that is not a JWT: ${JSON.stringify(stdout)}`));
                    return;
                }
                resolve(token);
            });
        });
    }

    // --- HTTP helpers -------------------------------------------------------------------------

    /** POST /api/v1/publish with the master key; throws unless the server answers 200 or 202. */
    async publish(hub, routingKey, payload, { messageId } = {}) {
        const body = { hub, routingKey, payload };
        if (messageId !== undefined) body.messageId = messageId;
        const res = await fetch(`${this.url}/api/v1/publish`, {
            method: "POST",
            headers: { "X-API-Key": MASTER_KEY, "Content-Type": "application/json" },
            body: JSON.stringify(body),
        });
        const text = await res.text();
        if (res.status !== 202 && res.status !== 200) {
            throw new Error(`publish ${routingKey} answered ${res.status}: ${text}`);
        }
        return { status: res.status, body: text };
    }

    /**
     * POST /api/v1/publish with a raw request body object (or string) and headers (the master key
     * unless `headers` says otherwise); returns {status, body (parsed JSON or text), text} without throwing.
     */
    async publishRaw(body, { headers = { "X-API-Key": MASTER_KEY } } = {}) {
        const res = await fetch(`${this.url}/api/v1/publish`, {
            method: "POST",
            headers: { "Content-Type": "application/json", ...headers },
            body: typeof body === "string" ? body : JSON.stringify(body),
        });
        const text = await res.text();
        let parsed = text;
        try {
            parsed = JSON.parse(text);
        } catch {
            /* leave as text */
        }
        return { status: res.status, body: parsed, text };
    }

    /**
     * Runs `hubcast publish --hub H --routing-key K [--message-id ID] JSON` against this server
     * (same environment, HUBCAST_LISTEN pointing at it); resolves with {code, stdout, stderr}.
     */
    cliPublish({ hub, routingKey, messageId, payload, env = {} }) {
        const args = ["publish", "--hub", hub, "--routing-key", routingKey];
        if (messageId !== undefined) args.push("--message-id", messageId);
        args.push(typeof payload === "string" ? payload : JSON.stringify(payload));
        const cliEnv = { ...this.env, HUBCAST_LISTEN: `127.0.0.1:${this.port}`, ...env };
        return new Promise((resolve) => {
            execFile(BIN, args, { env: cliEnv, timeout: 15_000 }, (err, stdout, stderr) => {
                const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
                resolve({ code, stdout, stderr, signal: err?.signal ?? null });
            });
        });
    }

    /** POST {hub}/negotiate; returns {status, body (parsed JSON or text)}. */
    async negotiate({ hub = "tasks", version = 1, headers = {}, query = "" } = {}) {
        const params = [];
        if (version !== null && version !== undefined) params.push(`negotiateVersion=${version}`);
        if (query) params.push(query);
        const url = `${this.hubUrl(hub)}/negotiate${params.length ? "?" + params.join("&") : ""}`;
        const res = await fetch(url, { method: "POST", headers });
        const text = await res.text();
        let body = text;
        try {
            body = JSON.parse(text);
        } catch {
            /* leave as text */
        }
        return { status: res.status, body, text };
    }

    // --- SignalR client helpers ---------------------------------------------------------------

    /**
     * Builds and starts a HubConnection with the official client.
     * protocol: "json" | "messagepack"; token: the access token (or a factory);
     * skipNegotiation: WebSockets only, without negotiate; transport: HttpTransportType value.
     */
    async connect({
        hub = "tasks",
        protocol = "json",
        token,
        skipNegotiation = false,
        transport,
        logLevel = LogLevel.None,
        start = true,
    } = {}) {
        const options = {};
        if (token !== undefined) {
            options.accessTokenFactory = typeof token === "function" ? token : () => token;
        }
        if (skipNegotiation) {
            options.skipNegotiation = true;
            options.transport = HttpTransportType.WebSockets;
        } else if (transport !== undefined) {
            options.transport = transport;
        } else if (FORCED_TRANSPORT !== undefined) {
            options.transport = FORCED_TRANSPORT;
            // Server-Sent Events carry text only: MessagePack cases run on Long Polling there.
            if (FORCED_TRANSPORT === HttpTransportType.ServerSentEvents && protocol === "messagepack") {
                options.transport = HttpTransportType.LongPolling;
            }
        }
        let builder = new HubConnectionBuilder().withUrl(this.hubUrl(hub), options).configureLogging(logLevel);
        if (protocol === "messagepack") builder = builder.withHubProtocol(new MessagePackHubProtocol());
        else if (protocol !== "json") throw new Error(`unknown protocol ${protocol}`);
        const connection = builder.build();
        // Record how the connection ended, for tests that expect a server-initiated close.
        connection.closed = new Promise((resolve) => connection.onclose((error) => resolve(error ?? null)));
        this.connections.add(connection);
        if (start) {
            await withTimeout(connection.start(), 10_000, `connect to ${hub} (${protocol})`);
            if (options.transport !== undefined) {
                // The client really uses the transport asked for (it would fall back silently otherwise).
                const used = connection.connection.transport?.constructor?.name;
                const expected = {
                    [HttpTransportType.WebSockets]: "WebSocketTransport",
                    [HttpTransportType.ServerSentEvents]: "ServerSentEventsTransport",
                    [HttpTransportType.LongPolling]: "LongPollingTransport",
                }[options.transport];
                if (used !== expected) throw new Error(`connected over ${used}, not ${expected}`);
            }
        }
        return connection;
    }

    /** Opens a raw `ws` socket; resolves with a RawClient once open, rejects with err.status on HTTP refusal. */
    async rawConnect({ hub = "tasks", query = "", headers = {}, token } = {}) {
        const h = { ...headers };
        if (token) h.Authorization = `Bearer ${token}`;
        const ws = new WebSocket(this.wsHubUrl(hub, query), { headers: h });
        const client = new RawClient(ws);
        this.rawClients.add(client);
        await client.opened;
        return client;
    }

    /** Opens a raw WebSocket expecting the upgrade to be refused; resolves with the HTTP status (or "open"). */
    async wsStatus({ hub = "tasks", query = "", headers = {} } = {}) {
        const ws = new WebSocket(this.wsHubUrl(hub, query), { headers });
        return withTimeout(
            new Promise((resolve, reject) => {
                ws.on("unexpected-response", (req, res) => {
                    let body = "";
                    res.setEncoding("utf8");
                    res.on("data", (d) => (body += d));
                    res.on("end", () => resolve({ status: res.statusCode, body }));
                    res.on("error", () => resolve({ status: res.statusCode, body }));
                });
                ws.on("open", () => {
                    ws.terminate();
                    resolve({ status: "open", body: "" });
                });
                ws.on("error", (err) => reject(err));
            }),
            5000,
            "websocket upgrade",
        );
    }

    /**
     * Asserts that the server still serves a brand-new connection end to end: negotiate, handshake,
     * invoke, and delivery of a published event.
     */
    async assertServes({ vkey = "7", protocol = "json" } = {}) {
        if (!this.alive) throw new Error(`hubcast process is gone\nstderr:\n${this.stderrTail()}`);
        const health = await fetch(`${this.url}/healthz`);
        if (health.status !== 200) throw new Error(`/healthz answered ${health.status}`);
        const token = await this.mintToken({ vkey });
        const c = await this.connect({ token, protocol });
        try {
            const taskId = uid("alive");
            await c.invoke("SubscribeToTask", taskId);
            const got = waitFor(c, "TaskProgress", 5000);
            await this.publish("tasks", `vkey.${vkey}.TaskProgress`, {
                taskId,
                taskType: "alive-check",
                percentComplete: 1,
                message: "still alive",
            });
            const args = await got;
            if (JSON.stringify(args) !== JSON.stringify([taskId, 1, "still alive"])) {
                throw new Error(`liveness check received unexpected arguments ${JSON.stringify(args)}`);
            }
        } finally {
            await c.stop();
            this.connections.delete(c);
        }
    }
}

/**
 * Registers before/after hooks for one server per test file and returns the server object.
 * On a failing test, the server's stderr tail is printed.
 */
export function useServer(envOverrides = {}) {
    const server = new Server(envOverrides);
    before(async () => {
        await server.start();
    });
    afterEach((t) => {
        if (t.passed === false) {
            console.error(`--- hubcast stderr (tail) after failing test "${t.name}" ---\n${server.stderrTail()}`);
        }
    });
    after(async () => {
        await server.stop();
    });
    return server;
}

// ---------------------------------------------------------------------------------------------
// HubConnection helpers
// ---------------------------------------------------------------------------------------------

/**
 * Resolves with the argument array of the next `event` on `connection`, or rejects after `ms`.
 * Register it BEFORE publishing.
 */
export function waitFor(connection, event, ms = 5000) {
    let handler;
    const p = new Promise((resolve) => {
        handler = (...args) => resolve(args);
        connection.on(event, handler);
    });
    return withTimeout(p, ms, `waiting for ${event}`).finally(() => connection.off(event, handler));
}

/** Records every `event` on `connection`: returns {calls: [[args]...], stop()}. */
export function collect(connection, event) {
    const calls = [];
    const handler = (...args) => calls.push(args);
    connection.on(event, handler);
    return {
        calls,
        stop: () => connection.off(event, handler),
    };
}

/** Resolves with the error passed to onclose (null for a clean close), or rejects after `ms`. */
export function waitClosed(connection, ms = 5000) {
    return withTimeout(connection.closed, ms, "waiting for the connection to close");
}

/** Invokes and returns the rejection (throws if the invocation succeeded). */
export async function invokeError(connection, method, ...args) {
    try {
        const result = await withTimeout(connection.invoke(method, ...args), 5000, `invoke ${method}`);
        throw Object.assign(new Error(`invoke ${method} resolved with ${JSON.stringify(result)}; expected a rejection`), {
            unexpectedSuccess: true,
        });
    } catch (err) {
        if (err.unexpectedSuccess) throw err;
        return err;
    }
}

export { HubConnectionState, HttpTransportType, LogLevel };

// ---------------------------------------------------------------------------------------------
// Raw WebSocket client (for protocol-level tests)
// ---------------------------------------------------------------------------------------------

const msgpackProtocol = new MessagePackHubProtocol();

/**
 * A raw `ws` client that treats the input as a byte stream, like the server must.
 * JSON mode: records end with 0x1E. MessagePack mode: after the JSON handshake reply, VarInt-framed
 * MessagePack messages, decoded with the official client's protocol implementation.
 */
export class RawClient {
    constructor(ws) {
        this.ws = ws;
        this.mode = "json"; // becomes "messagepack" after a successful messagepack handshake reply
        this.expectMode = "json";
        this.handshakeDone = false;
        this.buffer = Buffer.alloc(0);
        this.frames = []; // {data: Buffer, isBinary}
        this.queue = []; // parsed messages: {raw, msg} ({raw, error} when unparsable)
        this.waiters = [];
        this.closeInfo = null;
        this.status = null;
        this.opened = new Promise((resolve, reject) => {
            ws.on("open", () => resolve(this));
            ws.on("unexpected-response", (req, res) => {
                this.status = res.statusCode;
                res.resume();
                const err = new Error(`WebSocket upgrade refused with HTTP ${res.statusCode}`);
                err.status = res.statusCode;
                req.destroy();
                reject(err);
            });
            ws.on("error", (err) => reject(err));
        });
        this.opened.catch(() => {});
        this.closed = new Promise((resolve) => {
            ws.on("close", (code, reason) => {
                this.closeInfo = { code, reason: reason.toString() };
                resolve(this.closeInfo);
                this._wake();
            });
        });
        ws.on("message", (data, isBinary) => {
            const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data);
            this.frames.push({ data: buf, isBinary });
            this.buffer = Buffer.concat([this.buffer, buf]);
            this._parse();
            this._wake();
        });
    }

    _parse() {
        for (;;) {
            if (this.mode === "json" || !this.handshakeDone) {
                const idx = this.buffer.indexOf(0x1e);
                if (idx < 0) return;
                const raw = this.buffer.subarray(0, idx).toString("utf8");
                this.buffer = this.buffer.subarray(idx + 1);
                let entry;
                try {
                    entry = { raw, msg: JSON.parse(raw) };
                } catch (error) {
                    entry = { raw, error };
                }
                if (!this.handshakeDone) {
                    this.handshakeDone = true;
                    entry.handshake = true;
                    if (this.expectMode === "messagepack" && entry.msg && !entry.msg.error) this.mode = "messagepack";
                }
                this.queue.push(entry);
            } else {
                // VarInt length prefix, then the body.
                let length = 0;
                let shift = 0;
                let i = 0;
                for (;;) {
                    if (i >= this.buffer.length) return;
                    const b = this.buffer[i++];
                    length |= (b & 0x7f) << shift;
                    shift += 7;
                    if ((b & 0x80) === 0) break;
                    if (i >= 5) {
                        this.queue.push({ raw: this.buffer, error: new Error("bad varint") });
                        this.buffer = Buffer.alloc(0);
                        return;
                    }
                }
                if (this.buffer.length < i + length) return;
                const frame = this.buffer.subarray(0, i + length);
                this.buffer = this.buffer.subarray(i + length);
                const ab = new Uint8Array(frame).buffer; // copy: parseMessages needs an exact ArrayBuffer
                try {
                    const [msg] = msgpackProtocol.parseMessages(ab, NullLogger.instance);
                    this.queue.push({ raw: Buffer.from(frame), msg });
                } catch (error) {
                    this.queue.push({ raw: Buffer.from(frame), error });
                }
            }
        }
    }

    _wake() {
        const w = this.waiters;
        this.waiters = [];
        for (const fn of w) fn();
    }

    _changed() {
        return new Promise((resolve) => this.waiters.push(resolve));
    }

    /** Sends a string as a text frame, or a Buffer/Uint8Array as a binary frame. */
    send(data, { binary } = {}) {
        const isBinary = binary ?? typeof data !== "string";
        this.ws.send(data, { binary: isBinary });
    }

    /** Sends a JSON hub message (object) followed by the record separator. */
    sendJson(msg) {
        this.send(JSON.stringify(msg) + RS);
    }

    /** Sends a MessagePack hub message (object in the official client's shape). */
    sendMsgpack(msg) {
        this.send(Buffer.from(msgpackProtocol.writeMessage(msg)));
    }

    /**
     * Returns the next parsed message ({raw, msg}); skips Pings unless keepPings.
     * Rejects on timeout, or when the socket closed with nothing left to read.
     */
    async next(ms = 5000, { keepPings = false } = {}) {
        const deadline = Date.now() + ms;
        for (;;) {
            while (this.queue.length) {
                const entry = this.queue.shift();
                if (!keepPings && !entry.handshake && entry.msg && entry.msg.type === 6) continue;
                return entry;
            }
            if (this.closeInfo) {
                const err = new Error(`socket closed (code ${this.closeInfo.code}) before the expected message`);
                err.closed = true;
                throw err;
            }
            const left = deadline - Date.now();
            if (left <= 0) throw new Error(`no message within ${ms} ms`);
            let t;
            await Promise.race([this._changed(), new Promise((r) => (t = setTimeout(r, left)))]);
            clearTimeout(t);
        }
    }

    /** Sends a handshake and returns the parsed reply object. */
    async handshake(protocol = "json", version = 1) {
        this.expectMode = protocol;
        this.send(JSON.stringify({ protocol, version }) + RS);
        const entry = await this.next(5000);
        if (!entry.handshake) throw new Error(`expected a handshake reply, got ${entry.raw}`);
        if (entry.error) throw new Error(`unparsable handshake reply ${JSON.stringify(entry.raw)}`);
        return entry.msg;
    }

    /** Resolves with {code, reason} once the socket is closed, or rejects after `ms`. */
    waitClose(ms = 5000) {
        return withTimeout(this.closed, ms, "waiting for the server to close the socket");
    }

    /** All messages received until the socket closes (rejects after `ms`). */
    async drainUntilClose(ms = 5000) {
        await this.waitClose(ms);
        const out = this.queue.slice();
        this.queue = [];
        return out;
    }

    close() {
        try {
            this.ws.close();
        } catch {
            /* ignore */
        }
    }

    terminate() {
        try {
            this.ws.terminate();
        } catch {
            /* ignore */
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JWT helper for tokens the CLI cannot mint (wrong secret, expired)
// ---------------------------------------------------------------------------------------------

const b64url = (buf) => Buffer.from(buf).toString("base64url");

export function signJwt(claims, secret = JWT_SECRET) {
    const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
    const payload = b64url(JSON.stringify(claims));
    const sig = crypto.createHmac("sha256", secret).update(`${header}.${payload}`).digest();
    return `${header}.${payload}.${b64url(sig)}`;
}

/** Asserts that `msg` is a successful Completion (no error) of `invocationId` for a void method. */
export function assertVoidCompletion(msg, invocationId) {
    const ok =
        msg &&
        msg.type === 3 &&
        msg.invocationId === invocationId &&
        msg.error === undefined &&
        (msg.result === undefined || msg.result === null);
    if (!ok) {
        throw new Error(`expected a void Completion of invocation ${JSON.stringify(invocationId)}, got ${JSON.stringify(msg)}`);
    }
}

// ---------------------------------------------------------------------------------------------
// Recording several events of one connection, in arrival order
// ---------------------------------------------------------------------------------------------

/**
 * Records every event named in `events` on `connection`, in arrival order, as {event, args}.
 * `until(predicate, ms)` resolves once predicate(log) is true (rejects after `ms`);
 * `count(event)` counts the entries of one event; `stop()` removes the handlers.
 */
export function record(connection, events) {
    const log = [];
    let waiters = [];
    const handlers = events.map((event) => {
        const handler = (...args) => {
            log.push({ event, args });
            const w = waiters;
            waiters = [];
            for (const fn of w) fn();
        };
        connection.on(event, handler);
        return [event, handler];
    });
    return {
        log,
        count: (event) => log.filter((e) => e.event === event).length,
        of: (event) => log.filter((e) => e.event === event).map((e) => e.args),
        async until(predicate, ms = 5000, what = "the expected events") {
            const deadline = Date.now() + ms;
            while (!predicate(log)) {
                const left = deadline - Date.now();
                if (left <= 0) {
                    throw new Error(`timed out after ${ms} ms waiting for ${what}; got ${JSON.stringify(log).slice(0, 2000)}`);
                }
                let t;
                await Promise.race([
                    new Promise((r) => waiters.push(r)),
                    new Promise((r) => (t = setTimeout(r, left))),
                ]);
                clearTimeout(t);
            }
            return log;
        },
        stop() {
            for (const [event, handler] of handlers) connection.off(event, handler);
        },
    };
}

/** The HubException text the official client shows for a hub's own refusal. */
export const HUB_EXCEPTION = (method, text) =>
    `An unexpected error occurred invoking '${method}' on the server. HubException: ${text}`;

/** The error text for a method the hub does not have. */
export const NO_SUCH_METHOD = (method) =>
    `Failed to invoke '${method}' due to an error on the server. HubException: Method does not exist.`;
