// Server-Sent Events and Long Polling at the HTTP level, as ASP.NET Core's HttpConnectionDispatcher serves them,
// plus the official client on Long Polling with MessagePack.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { NullLogger } from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import {
    useServer,
    uid,
    sleep,
    withTimeout,
    waitFor,
    assertVoidCompletion,
    HttpTransportType,
    RS,
} from "./harness.js";

const LONG_POLL_TIMEOUT_MS = 1000;
const DISCONNECT_TIMEOUT_MS = 1000;

const server = useServer({
    HUBCAST_SIGNALR__LONG_POLL_TIMEOUT: "1s",
    HUBCAST_SIGNALR__DISCONNECT_TIMEOUT: "1s",
});

const VKEY = "7";
const HANDSHAKE_JSON = `{"protocol":"json","version":1}${RS}`;
const HANDSHAKE_MSGPACK = `{"protocol":"messagepack","version":1}${RS}`;
const MSGPACK_ON_SSE_ERROR =
    "Cannot use the 'messagepack' protocol on the current transport. The transport does not support 'Binary' transfer format.";
const msgpack = new MessagePackHubProtocol();

let tokenPromise;
const jwt = () => (tokenPromise ??= server.mintToken({ vkey: VKEY }));
const auth = async () => ({ Authorization: `Bearer ${await jwt()}` });

const invocation = (id, target, args) => JSON.stringify({ type: 1, invocationId: id, target, arguments: args }) + RS;

/** Negotiates (v1) and returns the connection token. */
async function negotiateToken() {
    const { status, body } = await server.negotiate({ version: 1, headers: await auth() });
    assert.equal(status, 200);
    assert.equal(typeof body.connectionToken, "string", `negotiate answered ${JSON.stringify(body)}`);
    return body.connectionToken;
}

const hubUrl = (query) => `${server.hubUrl("tasks")}${query === undefined ? "" : "?" + query}`;

async function request(method, query, { headers = {}, body, signal } = {}) {
    const res = await fetch(hubUrl(query), {
        method,
        headers: { ...(await auth()), ...headers },
        body,
        signal,
    });
    return res;
}

/** A request whose whole response is read: {status, headers, body (Buffer), text, ms}. */
async function exchange(method, query, options = {}) {
    const started = Date.now();
    const res = await request(method, query, options);
    const body = Buffer.from(await res.arrayBuffer());
    return { status: res.status, headers: res.headers, body, text: body.toString("utf8"), ms: Date.now() - started };
}

const poll = (token, options) => exchange("GET", `id=${encodeURIComponent(token)}&_=${Date.now()}`, options);
const post = (token, body) => exchange("POST", `id=${encodeURIComponent(token)}`, { body });

/** Splits a JSON-protocol text into messages (skipping pings). */
function jsonMessages(text) {
    assert.ok(text.endsWith(RS), `records end with 0x1E: ${JSON.stringify(text)}`);
    return text
        .split(RS)
        .slice(0, -1)
        .map((record) => JSON.parse(record))
        .filter((m) => m.type !== 6);
}

/** Reads a streaming response body into a growing buffer. */
class BodyReader {
    constructor(res) {
        this.res = res;
        this.buffer = Buffer.alloc(0);
        this.done = false;
        this.waiters = [];
        const reader = res.body.getReader();
        this.pumped = (async () => {
            try {
                for (;;) {
                    const { value, done } = await reader.read();
                    if (done) break;
                    this.buffer = Buffer.concat([this.buffer, Buffer.from(value)]);
                    this.wake();
                }
            } catch (error) {
                this.error = error;
            }
            this.done = true;
            this.wake();
        })();
    }

    get text() {
        return this.buffer.toString("utf8");
    }

    wake() {
        const w = this.waiters;
        this.waiters = [];
        for (const fn of w) fn();
    }

    /** Resolves once predicate(text) holds; rejects after `ms` (or when the stream ended without it). */
    async until(predicate, ms, what) {
        const deadline = Date.now() + ms;
        while (!predicate(this.text)) {
            if (this.done) throw new Error(`stream ended before ${what}; got ${JSON.stringify(this.text)}`);
            const left = deadline - Date.now();
            if (left <= 0) throw new Error(`timed out after ${ms} ms waiting for ${what}; got ${JSON.stringify(this.text)}`);
            let t;
            await Promise.race([new Promise((r) => this.waiters.push(r)), new Promise((r) => (t = setTimeout(r, left)))]);
            clearTimeout(t);
        }
        return this.text;
    }

    async ended(ms, what = "the end of the stream") {
        await withTimeout(this.pumped, ms, what);
        return this.text;
    }
}

/** The messages carried by complete SSE events in `text` (after the leading `:\r\n` comment), pings skipped. */
function sseMessages(text) {
    const events = text.split("\r\n\r\n").slice(0, -1);
    const out = [];
    for (const ev of events) {
        const lines = ev.split("\r\n").filter((l) => l !== ":" && l !== "");
        if (lines.length === 0) continue;
        for (const l of lines) assert.ok(l.startsWith("data: "), `SSE line is a data line: ${JSON.stringify(l)}`);
        const payload = lines.map((l) => l.slice("data: ".length)).join("\n");
        out.push(...jsonMessages(payload));
    }
    return out;
}

async function openSse(token, signal) {
    const res = await request("GET", `id=${encodeURIComponent(token)}`, {
        headers: { Accept: "text/event-stream" },
        signal,
    });
    return res;
}

describe("negotiate", () => {
    test("v1 lists WebSockets (Text, Binary), ServerSentEvents (Text), LongPolling (Text, Binary)", async () => {
        const { status, body } = await server.negotiate({ version: 1, headers: await auth() });
        assert.equal(status, 200);
        assert.deepEqual(body.availableTransports, [
            { transport: "WebSockets", transferFormats: ["Text", "Binary"] },
            { transport: "ServerSentEvents", transferFormats: ["Text"] },
            { transport: "LongPolling", transferFormats: ["Text", "Binary"] },
        ]);
    });
});

describe("Server-Sent Events", () => {
    test("stream headers, `:` comment, JSON handshake, invocation and event; second GET 409; DELETE 400", async () => {
        const token = await negotiateToken();
        const abort = new AbortController();
        try {
            const res = await openSse(token, abort.signal);
            assert.equal(res.status, 200);
            assert.equal(res.headers.get("content-type"), "text/event-stream");
            assert.equal(res.headers.get("cache-control"), "no-cache,no-store");
            const stream = new BodyReader(res);
            await stream.until((t) => t.length >= 3, 3000, "the first bytes");
            assert.equal(stream.text.slice(0, 3), ":\r\n", "the stream opens with the comment line `:\\r\\n`");

            const hs = await post(token, HANDSHAKE_JSON);
            assert.equal(hs.status, 200, `handshake POST: ${hs.text}`);
            await stream.until((t) => t.length >= `:\r\ndata: {}${RS}\r\n\r\n`.length, 3000, "the handshake reply");
            assert.ok(
                stream.text.startsWith(`:\r\ndata: {}${RS}\r\n\r\n`),
                `handshake reply event: ${JSON.stringify(stream.text)}`,
            );

            // A second event stream for the same connection is a conflict.
            const second = await exchange("GET", `id=${encodeURIComponent(token)}`, {
                headers: { Accept: "text/event-stream" },
            });
            assert.equal(second.status, 409, `second SSE GET: ${second.status} ${second.text}`);

            // DELETE only ends Long Polling connections.
            const del = await exchange("DELETE", `id=${encodeURIComponent(token)}`);
            assert.equal(del.status, 400, `DELETE on SSE: ${del.status} ${del.text}`);
            assert.equal(del.text, "Cannot terminate this connection using the DELETE endpoint.");

            // The connection still works after both refusals: invoke, then receive a published event.
            const taskId = uid("sse");
            const inv = await post(token, invocation("1", "SubscribeToTask", [taskId]));
            assert.equal(inv.status, 200);
            await stream.until((t) => sseMessages(t).some((m) => m.type === 3), 3000, "the completion");
            assertVoidCompletion(sseMessages(stream.text).find((m) => m.type === 3), "1");
            await server.publish("tasks", `vkey.${VKEY}.TaskProgress`, {
                taskId,
                taskType: "render",
                percentComplete: 42,
                message: "sse",
            });
            await stream.until((t) => sseMessages(t).some((m) => m.type === 1), 3000, "the TaskProgress invocation");
            const event = sseMessages(stream.text).find((m) => m.type === 1);
            assert.equal(event.target, "TaskProgress");
            assert.deepEqual(event.arguments, [taskId, 42, "sse"]);
        } finally {
            abort.abort();
        }
    });

    test("a MessagePack handshake over SSE is refused with the Binary transfer format error, and the stream ends", async () => {
        const token = await negotiateToken();
        const abort = new AbortController();
        try {
            const res = await openSse(token, abort.signal);
            assert.equal(res.status, 200);
            const stream = new BodyReader(res);
            await stream.until((t) => t.startsWith(":\r\n"), 3000, "the comment line");
            const hs = await post(token, HANDSHAKE_MSGPACK);
            assert.equal(hs.status, 200, `handshake POST: ${hs.status} ${hs.text}`);
            const expected = `:\r\ndata: ${JSON.stringify({ error: MSGPACK_ON_SSE_ERROR })}${RS}\r\n\r\n`;
            await stream.until((t) => t.length >= expected.length, 3000, "the handshake error");
            assert.equal(stream.text.slice(0, expected.length), expected);
            const all = await stream.ended(5000, "the SSE response to end after a refused handshake");
            assert.equal(all, expected, "nothing follows the handshake error");
        } finally {
            abort.abort();
        }
    });
});

describe("Long Polling", () => {
    /** Negotiate, first poll, handshake, handshake reply. */
    async function startLongPolling(handshake = HANDSHAKE_JSON) {
        const token = await negotiateToken();
        const first = await poll(token);
        assert.equal(first.status, 200);
        assert.equal(first.body.length, 0, `first poll body is empty: ${JSON.stringify(first.text)}`);
        assert.ok(first.ms < LONG_POLL_TIMEOUT_MS / 2, `the first poll answers at once (took ${first.ms} ms)`);
        assert.equal(first.headers.get("content-type"), "application/octet-stream");
        const hs = await post(token, handshake);
        assert.equal(hs.status, 200, `handshake POST: ${hs.text}`);
        const reply = await poll(token);
        assert.equal(reply.status, 200);
        assert.equal(reply.text, `{}${RS}`, "the poll after the handshake returns exactly the handshake reply");
        return token;
    }

    test("first poll empty at once; handshake; invocation; pending poll gets the event; idle poll 200 empty after the timeout", async () => {
        const token = await startLongPolling();
        const taskId = uid("lp");
        const inv = await post(token, invocation("1", "SubscribeToTask", [taskId]));
        assert.equal(inv.status, 200);
        const completion = await poll(token);
        assert.equal(completion.status, 200);
        const msgs = jsonMessages(completion.text);
        assert.equal(msgs.length, 1, completion.text);
        assertVoidCompletion(msgs[0], "1");

        // A pending poll returns as soon as there is something to send.
        const pending = poll(token);
        await sleep(200);
        await server.publish("tasks", `vkey.${VKEY}.TaskProgress`, {
            taskId,
            taskType: "render",
            percentComplete: 7,
            message: "lp",
        });
        const got = await pending;
        assert.equal(got.status, 200);
        assert.ok(got.ms < LONG_POLL_TIMEOUT_MS, `the pending poll returned with the event at once (took ${got.ms} ms)`);
        assert.deepEqual(jsonMessages(got.text), [{ type: 1, target: "TaskProgress", arguments: [taskId, 7, "lp"] }]);

        // Nothing to send: 200 with an empty body after the long-poll timeout (and no pings on long polling).
        const idle = await poll(token);
        assert.equal(idle.status, 200);
        assert.equal(idle.text, "", "an idle poll ends empty (no pings on long polling)");
        assert.ok(
            idle.ms >= LONG_POLL_TIMEOUT_MS - 100 && idle.ms < LONG_POLL_TIMEOUT_MS + 1500,
            `idle poll took ${idle.ms} ms, expected about ${LONG_POLL_TIMEOUT_MS}`,
        );
        // Still the same live connection afterwards.
        assert.equal((await post(token, `{"type":6}${RS}`)).status, 200);
        await exchange("DELETE", `id=${encodeURIComponent(token)}`);
    });

    test("a newer poll supersedes a pending one: the older gets 204", async () => {
        const token = await startLongPolling();
        const older = poll(token);
        await sleep(300);
        const newer = poll(token);
        const o = await older;
        assert.equal(o.status, 204, `superseded poll: ${o.status} ${JSON.stringify(o.text)}`);
        assert.ok(o.ms < LONG_POLL_TIMEOUT_MS, `the older poll ended when superseded (took ${o.ms} ms)`);
        const n = await newer;
        assert.equal(n.status, 200, "the newer poll is the live one: it ends with the timeout");
        assert.equal(n.text, "");
        await exchange("DELETE", `id=${encodeURIComponent(token)}`);
    });

    test("DELETE answers 202; later polls get 204 or 404; the connection is gone", async () => {
        const token = await startLongPolling();
        assert.equal((await post(token, `{"type":6}${RS}`)).status, 200, "positive control: POST works before DELETE");
        const del = await exchange("DELETE", `id=${encodeURIComponent(token)}`);
        assert.equal(del.status, 202, `DELETE: ${del.status} ${del.text}`);
        const after = await poll(token);
        assert.ok(after.status === 204 || after.status === 404, `poll after DELETE: ${after.status} ${after.text}`);
        assert.ok(after.ms < LONG_POLL_TIMEOUT_MS, `the poll after DELETE does not wait (took ${after.ms} ms)`);
        // Soon the connection is removed altogether.
        const deadline = Date.now() + 3000;
        let status;
        do {
            await sleep(100);
            status = (await post(token, `{"type":6}${RS}`)).status;
        } while (status !== 404 && Date.now() < deadline);
        assert.equal(status, 404, "POST after DELETE finds no connection");
    });

    test("a client that stops polling is closed after the disconnect timeout (then POST gets 404)", async () => {
        const token = await startLongPolling();
        const stoppedAt = Date.now();
        const first = await post(token, `{"type":6}${RS}`);
        assert.equal(first.status, 200, "positive control: the connection is alive when polling stops");
        let status = 200;
        let lastAlive = Date.now();
        while (Date.now() - stoppedAt < 6000) {
            await sleep(200);
            status = (await post(token, `{"type":6}${RS}`)).status;
            if (status !== 200) break;
            lastAlive = Date.now();
        }
        assert.equal(status, 404, "POST to a connection whose client stopped polling");
        assert.ok(
            lastAlive - stoppedAt >= DISCONNECT_TIMEOUT_MS - 200,
            `the connection was kept for the disconnect timeout (closed after ${lastAlive - stoppedAt} ms)`,
        );
        const gone = await poll(token);
        assert.equal(gone.status, 404, `poll after the disconnect timeout: ${gone.status} ${gone.text}`);
    });

    test("raw MessagePack over long polling: JSON handshake reply, then binary completion and event", async () => {
        const token = await startLongPolling(HANDSHAKE_MSGPACK);
        const taskId = uid("lpmp");
        const inv = await post(
            token,
            Buffer.from(
                msgpack.writeMessage({ type: 1, headers: {}, invocationId: "1", target: "SubscribeToTask", arguments: [taskId] }),
            ),
        );
        assert.equal(inv.status, 200);
        const completion = await poll(token);
        assert.equal(completion.status, 200);
        assert.equal(completion.headers.get("content-type"), "application/octet-stream");
        // void Completion of "1": [3, {}, "1", 2]
        assert.deepEqual([...completion.body], [0x06, 0x94, 0x03, 0x80, 0xa1, 0x31, 0x02]);
        const pending = poll(token);
        await sleep(100);
        await server.publish("tasks", `vkey.${VKEY}.TaskCompleted`, { taskId, taskType: "render", result: { n: 1 } });
        const got = await pending;
        assert.equal(got.status, 200);
        assert.equal(got.headers.get("content-type"), "application/octet-stream");
        const ab = new Uint8Array(got.body).buffer;
        const messages = msgpack.parseMessages(ab, NullLogger.instance);
        assert.equal(messages.length, 1);
        assert.equal(messages[0].type, 1);
        assert.equal(messages[0].target, "TaskCompleted");
        assert.deepEqual(messages[0].arguments, [taskId, { n: 1 }]);
        await exchange("DELETE", `id=${encodeURIComponent(token)}`);
    });

    test("the official client on Long Polling with MessagePack receives events", async () => {
        const c = await server.connect({ token: await jwt(), protocol: "messagepack", transport: HttpTransportType.LongPolling });
        try {
            assert.equal(c.connection.transport.constructor.name, "LongPollingTransport");
            const taskId = uid("lpc");
            await c.invoke("SubscribeToTask", taskId);
            const got = waitFor(c, "TaskProgress", 5000);
            await server.publish("tasks", `vkey.${VKEY}.TaskProgress`, {
                taskId,
                taskType: "render",
                percentComplete: 99,
                message: "binary",
            });
            assert.deepEqual(await got, [taskId, 99, "binary"]);
            // And a second one after an idle long-poll cycle.
            await sleep(LONG_POLL_TIMEOUT_MS + 300);
            const again = waitFor(c, "TaskProgress", 5000);
            await server.publish("tasks", `vkey.${VKEY}.TaskProgress`, { taskId, taskType: "render", percentComplete: 100 });
            assert.deepEqual(await again, [taskId, 100, null]);
        } finally {
            await c.stop();
            server.connections.delete(c);
        }
    });
});

describe("HTTP transport refusals", () => {
    test("missing id on SSE GET, long-poll GET, POST, DELETE: 400 Connection ID required", async () => {
        const cases = [
            ["GET", { Accept: "text/event-stream" }, "SSE GET"],
            ["GET", {}, "long-poll GET"],
            ["POST", {}, "POST"],
            ["DELETE", {}, "DELETE"],
        ];
        for (const [method, headers, what] of cases) {
            const r = await exchange(method, method === "GET" && !headers.Accept ? `_=${Date.now()}` : undefined, {
                headers,
                body: method === "POST" ? `{"type":6}${RS}` : undefined,
            });
            assert.equal(r.status, 400, `${what} without id: ${r.status} ${r.text}`);
            assert.equal(r.text, "Connection ID required", `${what} without id`);
        }
    });

    test("unknown id on SSE GET, long-poll GET, POST, DELETE: 404", async () => {
        const unknown = "AAAAAAAAAAAAAAAAAAAAAA";
        const cases = [
            ["GET", `id=${unknown}`, { Accept: "text/event-stream" }, "SSE GET"],
            ["GET", `id=${unknown}&_=${Date.now()}`, {}, "long-poll GET"],
            ["POST", `id=${unknown}`, {}, "POST"],
            ["DELETE", `id=${unknown}`, {}, "DELETE"],
        ];
        for (const [method, query, headers, what] of cases) {
            const r = await exchange(method, query, { headers, body: method === "POST" ? `{"type":6}${RS}` : undefined });
            assert.equal(r.status, 404, `${what} with an unknown id: ${r.status} ${r.text}`);
            assert.equal(r.text, "No Connection with that ID", `${what} with an unknown id`);
        }
    });

    test("POST on a WebSocket connection: 405", async () => {
        const token = await negotiateToken();
        const ws = await server.rawConnect({ query: `id=${encodeURIComponent(token)}`, token: await jwt() });
        try {
            assert.deepEqual(await ws.handshake("json", 1), {}, "positive control: the WebSocket connection works");
            const r = await post(token, `{"type":6}${RS}`);
            assert.equal(r.status, 405, `POST on a WebSocket connection: ${r.status} ${r.text}`);
            assert.equal(r.text, "POST requests are not allowed for WebSocket connections.");
        } finally {
            ws.terminate();
            server.rawClients.delete(ws);
        }
    });

    test("changing transport mid-connection: 400", async () => {
        const token = await negotiateToken();
        const first = await poll(token);
        assert.equal(first.status, 200);
        const r = await exchange("GET", `id=${encodeURIComponent(token)}`, { headers: { Accept: "text/event-stream" } });
        assert.equal(r.status, 400, `SSE GET on a long-polling connection: ${r.status} ${r.text}`);
        assert.equal(r.text, "Cannot change transports mid-connection");
        await exchange("DELETE", `id=${encodeURIComponent(token)}`);
    });
});
