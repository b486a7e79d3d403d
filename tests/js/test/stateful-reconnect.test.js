// Stateful reconnect (protocol version 2, WebSockets): the official client with `.withStatefulReconnect()`
// through a TCP proxy that breaks the connection without a close frame, plus raw protocol checks.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { HubConnectionBuilder } from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import {
    useServer,
    uid,
    sleep,
    withTimeout,
    waitFor,
    record,
    assertVoidCompletion,
    HubConnectionState,
    HttpTransportType,
    LogLevel,
    RS,
} from "./harness.js";
import { CuttableProxy } from "./tcp-proxy.js";

const VKEY = "7";
// Default disconnect timeout (15 s): blips of a second or two are bridged.
const server = useServer();
// A short disconnect timeout: a 3 s gap outlives the connection.
const shortServer = useServer({ HUBCAST_SIGNALR__DISCONNECT_TIMEOUT: "1s" });
// A small replay buffer: past it, the server waits for Acks before sending more.
const BUFFER_BYTES = 1000;
const smallBufferServer = useServer({ HUBCAST_SIGNALR__STATEFUL_RECONNECT_BUFFER_BYTES: String(BUFFER_BYTES) });

const progress = (srv, taskId, n) =>
    srv.publish("tasks", `vkey.${VKEY}.TaskProgress`, { taskId, taskType: "render", percentComplete: n, message: `e${n}` });

async function publishRange(srv, taskId, from, to) {
    for (let n = from; n <= to; n++) await progress(srv, taskId, n);
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** The percentComplete values received for `taskId`, checking each event's full argument list. */
function sequenceOf(rec, taskId) {
    return rec
        .of("TaskProgress")
        .filter((args) => args[0] === taskId)
        .map((args) => {
            assert.deepEqual(args, [taskId, args[1], `e${args[1]}`], "TaskProgress arguments");
            return args[1];
        });
}

/** Builds and starts an official client with stateful reconnect, connecting through `proxy`. */
async function connectStateful(proxy, { protocol = "json", token, automaticReconnect = false }) {
    let builder = new HubConnectionBuilder()
        .withUrl(`${proxy.url}/hubs/tasks`, { accessTokenFactory: () => token, transport: HttpTransportType.WebSockets })
        .withStatefulReconnect()
        .configureLogging(LogLevel.None);
    if (protocol === "messagepack") builder = builder.withHubProtocol(new MessagePackHubProtocol());
    if (automaticReconnect) builder = builder.withAutomaticReconnect([0, 500, 1000, 2000]);
    const c = builder.build();
    c.events = { reconnecting: [], reconnected: [], closed: [] };
    c.onreconnecting((error) => c.events.reconnecting.push(error ?? null));
    c.onreconnected((id) => c.events.reconnected.push(id));
    c.closed = new Promise((resolve) =>
        c.onclose((error) => {
            c.events.closed.push(error ?? null);
            resolve(error ?? null);
        }),
    );
    await withTimeout(c.start(), 10_000, `connect through the proxy (${protocol})`);
    assert.equal(c.connection.transport.constructor.name, "WebSocketTransport");
    return c;
}

async function stopQuietly(c) {
    try {
        await withTimeout(c.stop(), 5000, "connection.stop");
    } catch {
        /* ignore */
    }
}

async function until(predicate, ms, what) {
    const deadline = Date.now() + ms;
    while (!predicate()) {
        if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await sleep(25);
    }
}

const isNegotiate = (r) => r.target.startsWith("/hubs/tasks/negotiate");
const isWebSocketGet = (r) => r.line.startsWith("GET /hubs/tasks?");

describe("negotiate", () => {
    async function negotiate(query) {
        const token = await server.mintToken({ vkey: VKEY });
        return server.negotiate({ version: 1, query, headers: { Authorization: `Bearer ${token}` } });
    }

    test("useStatefulReconnect is offered only when the client asks for it", async () => {
        const plain = await negotiate("");
        assert.equal(plain.status, 200);
        assert.equal(typeof plain.body.connectionToken, "string", plain.text);
        assert.ok(!("useStatefulReconnect" in plain.body), `not asked, not offered: ${plain.text}`);
        assert.ok(!plain.text.includes("useStatefulReconnect"), plain.text);

        const asked = await negotiate("useStatefulReconnect=true");
        assert.equal(asked.status, 200);
        assert.equal(asked.body.useStatefulReconnect, true, `asked, offered: ${asked.text}`);
        assert.equal(typeof asked.body.connectionToken, "string");

        const declined = await negotiate("useStatefulReconnect=false");
        assert.equal(declined.status, 200);
        assert.ok(!("useStatefulReconnect" in declined.body), `=false is not a request: ${declined.text}`);

        const otherCase = await negotiate("UseStatefulReconnect=true");
        assert.equal(otherCase.body.useStatefulReconnect, true, `query keys are case-insensitive: ${otherCase.text}`);
    });
});

describe("official client across a connection blip", () => {
    for (const protocol of ["json", "messagepack"]) {
        test(`${protocol}: events 1..20 exactly once and in order, group membership kept, buffered invocation replayed`, async () => {
            const token = await server.mintToken({ vkey: VKEY });
            const proxy = await new CuttableProxy(server.port).start();
            let c;
            try {
                c = await connectStateful(proxy, { protocol, token });
                assert.equal(c.connection.features.reconnect, true, "the server granted stateful reconnect");
                const connectionId = c.connectionId;
                const taskA = uid("sra");
                const taskB = uid("srb");
                const rec = record(c, ["TaskProgress"]);

                await c.invoke("SubscribeToTask", taskA);
                await publishRange(server, taskA, 1, 5);
                await rec.until(() => sequenceOf(rec, taskA).length >= 5, 5000, "events 1..5");
                assert.deepEqual(sequenceOf(rec, taskA), range(1, 5));

                proxy.cut();
                // The client buffers this and replays it on the resumed connection.
                const invokeB = c.invoke("SubscribeToTask", taskB);
                invokeB.catch(() => {});
                await publishRange(server, taskA, 6, 15);
                await sleep(1000);
                assert.equal(proxy.heldCount, 1, "the client is trying to reconnect (held by the proxy)");
                assert.deepEqual(sequenceOf(rec, taskA), range(1, 5), "nothing arrives during the gap");
                proxy.resume();

                const resultB = await withTimeout(invokeB, 10_000, "SubscribeToTask invoked during the gap");
                assert.ok(resultB === undefined || resultB === null, `void result, got ${JSON.stringify(resultB)}`);
                await rec.until(() => sequenceOf(rec, taskA).length >= 15, 10_000, "events 6..15 replayed");

                await publishRange(server, taskA, 16, 20);
                await publishRange(server, taskB, 1, 3);
                await rec.until(
                    () => sequenceOf(rec, taskA).length >= 20 && sequenceOf(rec, taskB).length >= 3,
                    10_000,
                    "events 16..20 and the second task's events",
                );
                await sleep(1500); // late duplicates would show up here
                assert.deepEqual(sequenceOf(rec, taskA), range(1, 20), "every event exactly once, in order");
                assert.deepEqual(sequenceOf(rec, taskB), [1, 2, 3], "the invocation made during the gap took effect");

                assert.equal(c.state, HubConnectionState.Connected);
                assert.equal(c.connectionId, connectionId, "same connection");
                assert.deepEqual(c.events, { reconnecting: [], reconnected: [], closed: [] });

                const requests = proxy.requests();
                const negotiates = requests.filter(isNegotiate);
                assert.equal(negotiates.length, 1, `one negotiate only: ${JSON.stringify(requests)}`);
                assert.match(negotiates[0].target, /[?&]useStatefulReconnect=true(&|$)/);
                const sockets = requests.filter(isWebSocketGet);
                assert.equal(sockets.length, 2, `initial WebSocket and one resume: ${JSON.stringify(requests)}`);
                assert.equal(sockets[1].target, sockets[0].target, "the resume uses the same connection token");
                assert.deepEqual(
                    sockets.map((s) => s.status),
                    [101, 101],
                    "both WebSocket requests were upgraded",
                );
            } finally {
                if (c) await stopQuietly(c);
                await proxy.close();
            }
        });
    }
});

describe("gap longer than the disconnect timeout (1 s)", () => {
    async function cutFor(proxy, ms) {
        proxy.cut();
        await sleep(ms);
        assert.equal(proxy.heldCount, 1, "the client's resume attempt is waiting at the proxy");
        proxy.resume();
    }

    test("without automatic reconnect: the resume gets 404 and the client closes", async () => {
        const token = await shortServer.mintToken({ vkey: VKEY });
        const proxy = await new CuttableProxy(shortServer.port).start();
        let c;
        try {
            c = await connectStateful(proxy, { token });
            const taskA = uid("srx");
            await c.invoke("SubscribeToTask", taskA);
            const got = waitFor(c, "TaskProgress");
            await progress(shortServer, taskA, 1);
            assert.deepEqual(await got, [taskA, 1, "e1"], "positive control: delivery before the gap");

            await cutFor(proxy, 3000);
            const error = await withTimeout(c.closed, 10_000, "the client to close");
            assert.ok(error instanceof Error, `closed with an error, got ${error}`);
            assert.equal(c.state, HubConnectionState.Disconnected);
            assert.deepEqual(c.events.reconnecting, [], "no automatic reconnect configured");

            const sockets = proxy.requests().filter(isWebSocketGet);
            assert.equal(sockets.length, 2, JSON.stringify(proxy.requests()));
            assert.equal(sockets[1].target, sockets[0].target, "the resume used the old connection token");
            assert.deepEqual(sockets.map((s) => s.status), [101, 404], "the old connection is gone");
        } finally {
            if (c) await stopQuietly(c);
            await proxy.close();
        }
    });

    test("with automatic reconnect: a new connection id, and subscriptions must be made again", async () => {
        const token = await shortServer.mintToken({ vkey: VKEY });
        const proxy = await new CuttableProxy(shortServer.port).start();
        let c;
        let control;
        try {
            c = await connectStateful(proxy, { token, automaticReconnect: true });
            const oldId = c.connectionId;
            const taskA = uid("sry");
            const rec = record(c, ["TaskProgress"]);
            await c.invoke("SubscribeToTask", taskA);
            await progress(shortServer, taskA, 1);
            await rec.until(() => sequenceOf(rec, taskA).length >= 1, 5000, "event 1");

            await cutFor(proxy, 3000);
            await until(() => c.events.reconnected.length === 1, 10_000, "onreconnected");
            assert.equal(c.events.reconnecting.length, 1, "onreconnecting raised once");
            assert.equal(c.state, HubConnectionState.Connected);
            const newId = c.events.reconnected[0];
            assert.equal(typeof newId, "string");
            assert.notEqual(newId, oldId, "a new connection");
            assert.equal(c.connectionId, newId);
            assert.deepEqual(c.events.closed, []);

            const requests = proxy.requests();
            const sockets = requests.filter(isWebSocketGet);
            assert.equal(sockets.length, 3, JSON.stringify(requests));
            assert.equal(sockets[1].target, sockets[0].target, "the resume used the old connection token");
            assert.notEqual(sockets[2].target, sockets[0].target, "the full reconnect uses a new token");
            assert.deepEqual(sockets.map((s) => s.status), [101, 404, 101]);
            assert.equal(requests.filter(isNegotiate).length, 2, "the full reconnect negotiated again");

            // The old subscription is gone: a control connection subscribed to the same task gets the event,
            // the reconnected client does not.
            control = await shortServer.connect({ token });
            await control.invoke("SubscribeToTask", taskA);
            const controlGot = waitFor(control, "TaskProgress");
            await progress(shortServer, taskA, 2);
            assert.deepEqual(await controlGot, [taskA, 2, "e2"], "positive control");
            await sleep(700);
            assert.deepEqual(sequenceOf(rec, taskA), [1], "no event for a subscription of the old connection");

            await c.invoke("SubscribeToTask", taskA);
            await progress(shortServer, taskA, 3);
            await rec.until(() => sequenceOf(rec, taskA).length >= 2, 5000, "event 3 after resubscribing");
            assert.deepEqual(sequenceOf(rec, taskA), [1, 3]);
        } finally {
            if (control) {
                await stopQuietly(control);
                shortServer.connections.delete(control);
            }
            if (c) await stopQuietly(c);
            await proxy.close();
        }
    });
});

describe("raw protocol", () => {
    const json = (msg) => JSON.stringify(msg) + RS;

    /** Next message that is neither a Ping nor an Ack; Acks are collected in `acks`. */
    async function nextCounted(ws, acks, ms = 5000) {
        for (;;) {
            const entry = await ws.next(ms);
            if (entry.error) throw new Error(`unparsable message ${JSON.stringify(entry.raw)}`);
            if (entry.msg.type === 8) {
                acks.push(entry.msg.sequenceId);
                continue;
            }
            return entry.msg;
        }
    }

    test("JSON v2: server acks, a dropped socket is resumed with Sequence and replay of unacked messages only", async () => {
        const jwt = await server.mintToken({ vkey: VKEY });
        const { body } = await server.negotiate({
            version: 1,
            query: "useStatefulReconnect=true",
            headers: { Authorization: `Bearer ${jwt}` },
        });
        assert.equal(body.useStatefulReconnect, true, JSON.stringify(body));
        const id = `id=${encodeURIComponent(body.connectionToken)}`;
        const taskId = uid("raw");
        const event = (n) => ({ type: 1, target: "TaskProgress", arguments: [taskId, n, `e${n}`] });
        const sockets = [];
        try {
            let ws = await server.rawConnect({ query: id, token: jwt });
            sockets.push(ws);
            assert.deepEqual(await ws.handshake("json", 2), {});
            const acks = [];
            ws.send(json({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [taskId] }));
            assertVoidCompletion(await nextCounted(ws, acks), "1"); // server message 1
            await publishRange(server, taskId, 1, 2); // server messages 2, 3
            assert.deepEqual(await nextCounted(ws, acks), event(1));
            assert.deepEqual(await nextCounted(ws, acks), event(2));
            // The server acknowledges our invocation (client message 1) within about a second.
            const deadline = Date.now() + 3000;
            while (!acks.includes(1) && Date.now() < deadline) {
                try {
                    const m = await nextCounted(ws, acks, Math.max(1, deadline - Date.now()));
                    throw new Error(`unexpected message ${JSON.stringify(m)}`);
                } catch (err) {
                    if (!/no message within/.test(err.message)) throw err;
                }
            }
            assert.deepEqual(acks, [1], "one Ack of the client's invocation");

            // Drop without a close frame; nothing acked yet, so everything is replayed.
            ws.terminate();
            await sleep(200);
            ws = await server.rawConnect({ query: id, token: jwt });
            sockets.push(ws);
            ws.send(json({ type: 9, sequenceId: 2 }));
            assert.deepEqual(await nextCounted(ws, acks), { type: 9, sequenceId: 1 }, "Sequence comes first");
            assertVoidCompletion(await nextCounted(ws, acks), "1");
            assert.deepEqual(await nextCounted(ws, acks), event(1));
            assert.deepEqual(await nextCounted(ws, acks), event(2));

            // Ack all three, publish two more, drop again: only the two are replayed, numbered 4 and 5.
            ws.send(json({ type: 8, sequenceId: 3 }));
            await sleep(300);
            await publishRange(server, taskId, 3, 4);
            assert.deepEqual(await nextCounted(ws, acks), event(3));
            assert.deepEqual(await nextCounted(ws, acks), event(4));
            ws.terminate();
            await sleep(200);
            ws = await server.rawConnect({ query: id, token: jwt });
            sockets.push(ws);
            ws.send(json({ type: 9, sequenceId: 2 }));
            assert.deepEqual(await nextCounted(ws, acks), { type: 9, sequenceId: 4 });
            assert.deepEqual(await nextCounted(ws, acks), event(3));
            assert.deepEqual(await nextCounted(ws, acks), event(4));

            // And the resumed connection keeps working.
            await progress(server, taskId, 5);
            assert.deepEqual(await nextCounted(ws, acks), event(5));
            ws.send(json({ type: 1, invocationId: "2", target: "UnsubscribeFromTask", arguments: [taskId] }));
            assertVoidCompletion(await nextCounted(ws, acks), "2");
        } finally {
            for (const s of sockets) {
                s.terminate();
                server.rawClients.delete(s);
            }
        }
    });

    test("the replay buffer is bounded in bytes: past the limit, further messages wait for the client's Ack", async () => {
        const jwt = await smallBufferServer.mintToken({ vkey: VKEY });
        const { body } = await smallBufferServer.negotiate({
            version: 1,
            query: "useStatefulReconnect=true",
            headers: { Authorization: `Bearer ${jwt}` },
        });
        assert.equal(body.useStatefulReconnect, true, JSON.stringify(body));
        const taskId = uid("buf");
        const ws = await smallBufferServer.rawConnect({ query: `id=${encodeURIComponent(body.connectionToken)}`, token: jwt });
        try {
            assert.deepEqual(await ws.handshake("json", 2), {});
            const acks = [];
            const counted = []; // {msg, bytes}
            const take = async (ms) => {
                const entry = await ws.next(ms);
                if (entry.error) throw new Error(`unparsable message ${JSON.stringify(entry.raw)}`);
                if (entry.msg.type === 8) acks.push(entry.msg.sequenceId);
                else counted.push({ msg: entry.msg, bytes: Buffer.byteLength(entry.raw) + 1 });
            };
            ws.send(json({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [taskId] }));
            while (counted.length === 0) await take(5000); // an Ack of our invocation may come first
            assertVoidCompletion(counted[0].msg, "1");
            await publishRange(smallBufferServer, taskId, 1, 20);
            // Read until nothing more comes for 1.5 s (no Acks from us).
            for (;;) {
                try {
                    await take(1500);
                } catch (err) {
                    if (/no message within/.test(err.message)) break;
                    throw err;
                }
            }
            const events = counted.slice(1).map((c) => c.msg);
            const sent = counted.reduce((sum, c) => sum + c.bytes, 0);
            const largest = Math.max(...counted.map((c) => c.bytes));
            assert.ok(events.length < 20, `the server stopped before all 20 events (sent ${events.length})`);
            assert.ok(
                sent >= BUFFER_BYTES && sent < BUFFER_BYTES + largest,
                `unacknowledged bytes sent ${sent}, expected the limit ${BUFFER_BYTES} plus less than one message`,
            );
            // Acknowledge everything received: the rest follows, in order, exactly once.
            ws.send(json({ type: 8, sequenceId: counted.length }));
            const deadline = Date.now() + 5000;
            while (counted.length < 21 && Date.now() < deadline) await take(Math.max(1, deadline - Date.now()));
            await sleep(300);
            while (ws.queue.length) await take(10);
            assert.deepEqual(
                counted.slice(1).map((c) => c.msg),
                range(1, 20).map((n) => ({ type: 1, target: "TaskProgress", arguments: [taskId, n, `e${n}`] })),
            );
        } finally {
            ws.terminate();
            smallBufferServer.rawClients.delete(ws);
        }
    });

    test("a version 1 handshake gets no stateful reconnect: a dropped socket's token is gone (404)", async () => {
        const jwt = await server.mintToken({ vkey: VKEY });
        const { body } = await server.negotiate({
            version: 1,
            query: "useStatefulReconnect=true",
            headers: { Authorization: `Bearer ${jwt}` },
        });
        const id = `id=${encodeURIComponent(body.connectionToken)}`;
        const ws = await server.rawConnect({ query: id, token: jwt });
        try {
            assert.deepEqual(await ws.handshake("json", 1), {});
            ws.terminate();
            // The token is released as soon as the server notices the drop.
            let status;
            const deadline = Date.now() + 3000;
            do {
                await sleep(200);
                status = (await server.wsStatus({ query: id, headers: { Authorization: `Bearer ${jwt}` } })).status;
            } while (status !== 404 && Date.now() < deadline);
            assert.equal(status, 404);
        } finally {
            ws.terminate();
            server.rawClients.delete(ws);
        }
    });
});
