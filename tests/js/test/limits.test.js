// Limits (contract section 6): connections per key (and the max_connections claim), the invocation
// rate limit, and slow consumers.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
    useServer,
    record,
    uid,
    sleep,
    withTimeout,
    HUB_EXCEPTION,
    HubConnectionState,
    RS,
} from "./harness.js";

const server = useServer({
    HUBCAST_LIMITS__CONNECTIONS_PER_KEY: "3",
    HUBCAST_LIMITS__OUTBOUND_BUFFER_BYTES: "65536",
    HUBCAST_LIMITS__WRITE_TIMEOUT: "1s",
    HUBCAST_LIMITS__INVOCATIONS_PER_SECOND: "10",
    HUBCAST_LIMITS__INVOCATION_BURST: "20",
});

let keyCounter = 0;
function freshKey() {
    keyCounter += 1;
    return String(100000 + (process.pid % 1000) * 100 + keyCounter);
}

const bearer = (token) => ({ Authorization: `Bearer ${token}` });

/** Polls `fn` until it returns true (at most `ms`). */
async function eventually(fn, ms = 2000) {
    const deadline = Date.now() + ms;
    for (;;) {
        if (await fn()) return true;
        if (Date.now() > deadline) return false;
        await sleep(100);
    }
}

test("connections per key: the 4th gets 429 on negotiate and on a skipNegotiation WebSocket; freed by a close", async () => {
    const k = freshKey();
    const token = await server.mintToken({ vkey: k });
    // Three connections across hubs count for the same key.
    const c1 = await server.connect({ hub: "tasks", token });
    const c2 = await server.connect({ hub: "spend", token, protocol: "messagepack" });
    const c3 = await server.connect({ hub: "tasks", token, skipNegotiation: true });

    const res = await server.negotiate({ hub: "tasks", headers: bearer(token) });
    assert.equal(res.status, 429, `4th negotiate: ${res.status} ${res.text}`);
    assert.equal((await server.negotiate({ hub: "notifications", headers: bearer(token) })).status, 429);
    assert.equal((await server.wsStatus({ hub: "tasks", query: `access_token=${token}` })).status, 429);
    // The refusals took no slot and the three still work.
    for (const c of [c1, c2, c3]) assert.equal(c.state, HubConnectionState.Connected);

    // Another key is unaffected.
    const other = await server.connect({ hub: "tasks", token: await server.mintToken({ vkey: freshKey() }) });
    assert.equal(other.state, HubConnectionState.Connected);
    await other.stop();

    // After one closes, a new one succeeds.
    await c2.stop();
    let c4 = null;
    const ok = await eventually(async () => {
        try {
            c4 = await server.connect({ hub: "webhooks", token });
            return true;
        } catch {
            return false;
        }
    });
    assert.ok(ok, "a connection succeeds after one of the three closed");
    assert.equal(c4.state, HubConnectionState.Connected);
    // And the limit holds again.
    assert.equal((await server.negotiate({ hub: "tasks", headers: bearer(token) })).status, 429);
    for (const c of [c1, c3, c4]) await c.stop();
});

test("the max_connections claim lowers the limit for that token", async () => {
    const k = freshKey();
    const limited = await server.mintToken({ vkey: k, maxConnections: 1 });
    const c1 = await server.connect({ hub: "tasks", token: limited });
    const res = await server.negotiate({ hub: "tasks", headers: bearer(limited) });
    assert.equal(res.status, 429, `second connection with max_connections=1: ${res.status} ${res.text}`);
    assert.equal((await server.wsStatus({ hub: "tasks", query: `access_token=${limited}` })).status, 429);
    // The claim lowers the limit for that token only: a token without it still gets the configured 3.
    const plain = await server.mintToken({ vkey: k });
    const c2 = await server.connect({ hub: "tasks", token: plain });
    assert.equal(c2.state, HubConnectionState.Connected);
    await c1.stop();
    await c2.stop();
    // With the key back at 0 connections, the limited token connects again.
    let c3 = null;
    const ok = await eventually(async () => {
        try {
            c3 = await server.connect({ hub: "spend", token: limited });
            return true;
        } catch {
            return false;
        }
    });
    assert.ok(ok, "the limited token connects again once its key has no connection");
    await c3.stop();
});

test("invocation rate limit: 25 rapid invocations, at least one refused with the exact text, at least 20 succeed", async () => {
    const k = freshKey();
    const c = await server.connect({ hub: "tasks", token: await server.mintToken({ vkey: k }) });
    const results = await Promise.allSettled(Array.from({ length: 25 }, (_, i) => c.invoke("SubscribeToTask", `rl-${i}`)));
    const ok = results.filter((r) => r.status === "fulfilled").length;
    const refused = results.filter((r) => r.status === "rejected");
    assert.ok(ok >= 20, `${ok} succeeded`);
    assert.ok(refused.length >= 1, "at least one refused");
    for (const r of refused) {
        assert.equal(r.reason.message, HUB_EXCEPTION("SubscribeToTask", "Rate limit exceeded. Please try again later."));
    }
    // The connection stays open and the bucket refills.
    assert.equal(c.state, HubConnectionState.Connected);
    await sleep(1200);
    const taskId = uid("after-rl");
    await c.invoke("SubscribeToTask", taskId);
    const r = record(c, ["TaskProgress"]);
    await server.publish("tasks", `vkey.${k}.TaskProgress`, { taskId, taskType: "x", percentComplete: 1 });
    await r.until((l) => l.length >= 1);
    await c.stop();
});

test("slow consumer: a client that stops reading is closed; the others of its group get every event in order", async () => {
    const k = freshKey();
    const token = await server.mintToken({ vkey: k });
    const taskId = uid("slow");

    const slow = await server.rawConnect({ hub: "tasks", query: `access_token=${token}` });
    assert.deepEqual(await slow.handshake("json"), {});
    slow.sendJson({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [taskId] });
    const completion = await slow.next(5000);
    assert.equal(completion.msg.type, 3);
    assert.equal(completion.msg.error, undefined);

    const healthy = await server.connect({ hub: "tasks", token });
    await healthy.invoke("SubscribeToTask", taskId);
    const received = [];
    healthy.on("TaskProgress", (id, pct, message) => received.push(message.slice(0, message.indexOf(":"))));

    slow.ws._socket.pause();
    // Loopback socket buffers (kernel send buffer of the server plus receive buffer of the paused client)
    // absorb about 4 MB here before the server sees any backpressure: 300 x 8 KB would all fit, so send
    // 1200 x 8 KB (about 10 MB).
    const COUNT = 1200;
    const filler = "x".repeat(8 * 1024);
    const started = Date.now();
    for (let i = 0; i < COUNT; i++) {
        await server.publish("tasks", `vkey.${k}.TaskProgress`, {
            taskId,
            taskType: "bulk",
            percentComplete: i % 101,
            message: `${i}:${filler}`,
        });
    }
    await withTimeout(
        (async () => {
            while (received.length < COUNT) await sleep(20);
        })(),
        30_000,
        `the healthy client receiving ${COUNT} events (got ${received.length})`,
    );
    assert.deepEqual(received, Array.from({ length: COUNT }, (_, i) => String(i)), "every event, in order");
    const elapsed = Date.now() - started;

    slow.ws._socket.resume();
    const info = await slow.waitClose(5000);
    assert.ok(info, "the slow consumer was closed");
    // If the server managed to send a Close message, it says why.
    const close = slow.queue.concat([]).find((m) => m.msg && m.msg.type === 7);
    if (close) assert.deepEqual(close.msg, { type: 7, error: "Slow consumer", allowReconnect: true });
    // It did not get all events (it was dropped, not buffered without bound).
    const got = slow.queue.filter((m) => m.msg && m.msg.type === 1).length;
    assert.ok(got < COUNT, `the slow consumer received ${got} of ${COUNT} events (delivery took ${elapsed} ms)`);

    assert.equal(healthy.state, HubConnectionState.Connected);
    await healthy.stop();
    await server.assertServes({ vkey: freshKey() });
});

test("positive control: an idle but reading client is not a slow consumer", async () => {
    const k = freshKey();
    const token = await server.mintToken({ vkey: k });
    const taskId = uid("reader");
    const raw = await server.rawConnect({ hub: "tasks", query: `access_token=${token}` });
    assert.deepEqual(await raw.handshake("json"), {});
    raw.send(JSON.stringify({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [taskId] }) + RS);
    assert.equal((await raw.next(5000)).msg.type, 3);
    const filler = "y".repeat(8 * 1024);
    for (let i = 0; i < 50; i++) {
        await server.publish("tasks", `vkey.${k}.TaskProgress`, { taskId, taskType: "bulk", percentComplete: 1, message: `${i}:${filler}` });
    }
    for (let i = 0; i < 50; i++) {
        const m = await raw.next(5000);
        assert.equal(m.msg.type, 1);
        assert.ok(m.msg.arguments[2].startsWith(`${i}:`));
    }
    assert.equal(raw.closeInfo, null, "still open");
    raw.close();
});
