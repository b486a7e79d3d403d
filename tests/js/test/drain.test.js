// Graceful drain on SIGTERM: /readyz turns 503 "draining" at once, every client gets
// {"type":7,"allowReconnect":true} and its socket closes, the closes are spread over signalr.drain_window,
// and the process exits 0 soon after the last connection is gone. The official JS client with
// withAutomaticReconnect() honours allowReconnect: it starts reconnecting instead of closing.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { HubConnectionBuilder, HttpTransportType, LogLevel } from "@microsoft/signalr";
import { Server, withTimeout, sleep } from "./harness.js";

const WINDOW_MS = 2000;
const CLIENTS = 10;

const servers = [];
async function startServer() {
    const s = new Server({ HUBCAST_SIGNALR__DRAIN_WINDOW: `${WINDOW_MS / 1000}s` });
    servers.push(s);
    await s.start();
    return s;
}

afterEach(async (t) => {
    if (t.passed === false) {
        for (const s of servers) console.error(`--- hubcast stderr after failing test "${t.name}" ---\n${s.stderrTail()}`);
    }
    await Promise.all(servers.map((s) => s.stop().catch(() => {})));
    servers.length = 0;
});

async function readyz(server) {
    try {
        const res = await fetch(`${server.url}/readyz`);
        return { status: res.status, body: await res.text() };
    } catch (err) {
        return { status: "error", body: err.message };
    }
}

test(`SIGTERM: /readyz 503 at once, ${CLIENTS} clients closed with allowReconnect over the ${WINDOW_MS} ms window, exit 0`, async (t) => {
    const server = await startServer();
    const token = await server.mintToken({ vkey: "7" });
    const clients = [];
    for (let i = 0; i < CLIENTS; i++) {
        const c = await server.rawConnect({ token });
        assert.deepEqual(await c.handshake("json", 1), {}, `client ${i} handshake`);
        c.closeMessageAt = null;
        c.socketClosedAt = null;
        c.ws.on("message", (data) => {
            if (c.closeMessageAt === null && Buffer.from(data).toString("utf8").includes('"type":7')) c.closeMessageAt = Date.now();
        });
        c.ws.on("close", () => (c.socketClosedAt = Date.now()));
        clients.push(c);
    }
    assert.deepEqual(await readyz(server), { status: 200, body: "ready" }, "ready before SIGTERM");

    // Poll /readyz from the signal on; remember every change of answer.
    const answers = [];
    let polling = true;
    const poller = (async () => {
        while (polling) {
            const a = await readyz(server);
            if (answers.length === 0 || answers[answers.length - 1].status !== a.status || answers[answers.length - 1].body !== a.body) {
                answers.push({ ...a, at: Date.now() });
            }
            await sleep(10);
        }
    })();

    const sigtermAt = Date.now();
    server.child.kill("SIGTERM");
    const exited = server.exited.then((r) => ({ ...r, at: Date.now() }));

    try {
        await withTimeout(
            Promise.all(clients.map((c) => c.closed)),
            WINDOW_MS + 3000,
            `all ${CLIENTS} sockets closed (closed so far: ${clients.filter((c) => c.socketClosedAt).length})`,
        );
    } finally {
        polling = false;
        await poller;
    }

    // /readyz: 503 "draining" quickly, and before the last client was closed.
    const first503 = answers.find((a) => a.status === 503);
    assert.ok(first503, `/readyz turned 503 after SIGTERM: ${JSON.stringify(answers)}`);
    assert.equal(first503.body, "draining", "/readyz body while draining");
    const lastCloseAt = Math.max(...clients.map((c) => c.closeMessageAt ?? Infinity));
    assert.ok(first503.at - sigtermAt < 500, `/readyz 503 within 500 ms of SIGTERM (after ${first503.at - sigtermAt} ms)`);
    assert.ok(first503.at < lastCloseAt, `/readyz 503 (at +${first503.at - sigtermAt} ms) before the last client is closed (+${lastCloseAt - sigtermAt} ms)`);
    assert.ok(
        answers.filter((a) => a.at >= first503.at).every((a) => a.status !== 200),
        `never ready again once draining: ${JSON.stringify(answers)}`,
    );

    // Every client: exactly one Close {"type":7,"allowReconnect":true} (Pings aside), then the socket closes.
    for (const [i, c] of clients.entries()) {
        const rest = (await c.drainUntilClose(1000)).filter((m) => !(m.msg && m.msg.type === 6));
        assert.deepEqual(
            rest.map((m) => m.msg ?? m.raw),
            [{ type: 7, allowReconnect: true }],
            `client ${i}: exactly the Close message with allowReconnect, nothing else`,
        );
        assert.ok(c.closeMessageAt !== null && c.socketClosedAt >= c.closeMessageAt, `client ${i}: the Close message came before the socket closed`);
    }

    // The process exits 0 soon after.
    const exit = await withTimeout(exited, 8000 - (Date.now() - sigtermAt), "the process exits within 8 s of SIGTERM");
    assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, "exit status");
    assert.ok(exit.at - sigtermAt <= 8000, `exited ${exit.at - sigtermAt} ms after SIGTERM`);

    // Spread over the window, all within about window + 1 s (checked last: a failure here leaves the rest verified).
    const times = clients.map((c) => c.closeMessageAt - sigtermAt).sort((a, b) => a - b);
    t.diagnostic(`close offsets after SIGTERM (ms): ${JSON.stringify(times)}; exit after ${exit.at - sigtermAt} ms`);
    assert.ok(times[times.length - 1] <= WINDOW_MS + 1000, `every client closed within ${WINDOW_MS + 1000} ms of SIGTERM (offsets ${JSON.stringify(times)})`);
    const spread = times[times.length - 1] - times[0];
    assert.ok(spread >= 100, `closes are not all within 100 ms (offsets after SIGTERM: ${JSON.stringify(times)})`);
    assert.ok(
        spread >= WINDOW_MS / 2,
        `the last close comes at least ${WINDOW_MS / 2} ms after the first with a ${WINDOW_MS} ms window (spread ${spread} ms; offsets ${JSON.stringify(times)})`,
    );
});

test("SIGTERM: the official client with withAutomaticReconnect() starts reconnecting (allowReconnect honoured)", async () => {
    const server = await startServer();
    const token = await server.mintToken({ vkey: "7" });
    const connection = new HubConnectionBuilder()
        .withUrl(server.hubUrl("tasks"), {
            accessTokenFactory: () => token,
            skipNegotiation: true,
            transport: HttpTransportType.WebSockets,
        })
        .withAutomaticReconnect([0, 60_000]) // one immediate retry, then a long pause: no hammering while it exits
        .configureLogging(LogLevel.None)
        .build();
    const events = [];
    const reconnecting = new Promise((resolve) =>
        connection.onreconnecting((error) => {
            events.push({ event: "reconnecting", error: error?.message ?? null, at: Date.now() });
            resolve(error);
        }),
    );
    connection.onclose((error) => events.push({ event: "close", error: error?.message ?? null, at: Date.now() }));
    await withTimeout(connection.start(), 10_000, "connect");

    const sigtermAt = Date.now();
    server.child.kill("SIGTERM");
    try {
        await withTimeout(reconnecting, WINDOW_MS + 2000, `onreconnecting after SIGTERM (events so far ${JSON.stringify(events)})`);
        assert.equal(events[0].event, "reconnecting", `the first thing the client reports is reconnecting: ${JSON.stringify(events)}`);
        assert.ok(
            !/Server returned an error on close/.test(events[0].error ?? ""),
            `the Close carried no error: ${JSON.stringify(events[0])}`,
        );
        assert.ok(events[0].at - sigtermAt <= WINDOW_MS + 1000, `reconnecting ${events[0].at - sigtermAt} ms after SIGTERM`);
    } finally {
        await withTimeout(connection.stop(), 5000, "connection.stop").catch(() => {});
    }
    const exit = await withTimeout(server.exited, 8000, "the process exits within 8 s of SIGTERM");
    assert.deepEqual(exit, { code: 0, signal: null }, "exit status");
});
