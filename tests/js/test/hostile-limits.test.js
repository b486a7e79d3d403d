// Hostile clients against the limits: subscriptions per connection, an SSE client that stops reading,
// oversized publishes, and publishes with ever-new invalid names (metric label cardinality).
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { useServer, uid, sleep, withTimeout, record, HUB_EXCEPTION, HubConnectionState, RS, MASTER_KEY } from "./harness.js";
import {
    freshKey,
    bearer,
    trackPanics,
    assertNoPanic,
    tcpConnect,
    waitServerClose,
    timedFetch,
    invoke,
    stop,
} from "./hostile-helpers.js";

// Nothing may hang: every test is bounded.
const TEST_OPTS = { timeout: 30000 };

// Subscriptions: the rate limiter must not interfere.
const groupServer = useServer({
    HUBCAST_LIMITS__INVOCATIONS_PER_SECOND: "1000",
    HUBCAST_LIMITS__INVOCATION_BURST: "1000",
});
trackPanics(groupServer);

const WRITE_TIMEOUT_S = 2;
const server = useServer({
    HUBCAST_LIMITS__OUTBOUND_BUFFER_BYTES: "65536",
    HUBCAST_LIMITS__WRITE_TIMEOUT: `${WRITE_TIMEOUT_S}s`,
});
trackPanics(server);

const TOO_MANY = (method) => HUB_EXCEPTION(method, "Too many subscriptions");

/** Awaits an invocation that must succeed; a failure names the step. */
async function ok(what, promise) {
    try {
        return await withTimeout(promise, 5000, what);
    } catch (err) {
        throw new Error(`${what} failed: ${err.message}`);
    }
}

async function expectRefused(promise, text) {
    try {
        await withTimeout(promise, 5000, "invocation");
    } catch (err) {
        assert.equal(err.message, text);
        return;
    }
    assert.fail(`expected a refusal "${text}", the invocation succeeded`);
}

describe("groups per connection (limits.groups_per_connection, default 100)", () => {
    test("SubscribeToTask: 100 distinct succeed, the 101st is refused; re-subscribing succeeds; unsubscribing frees room", TEST_OPTS, async () => {
        const vkey = freshKey();
        const c = await groupServer.connect({ token: await groupServer.mintToken({ vkey }) });
        const ids = Array.from({ length: 100 }, (_, i) => `g${i}-${uid("grp")}`);
        for (const [i, id] of ids.entries()) await ok(`subscription ${i + 1} of 100`, c.invoke("SubscribeToTask", id));
        await expectRefused(c.invoke("SubscribeToTask", uid("grp-101")), TOO_MANY("SubscribeToTask"));
        // Joining a group already joined is not a new group.
        await ok("re-subscribing to the 1st", c.invoke("SubscribeToTask", ids[0]));
        await ok("re-subscribing to the 100th", c.invoke("SubscribeToTask", ids[99]));
        // Refused once more, then room after an unsubscribe.
        await expectRefused(c.invoke("SubscribeToTask", uid("grp-101b")), TOO_MANY("SubscribeToTask"));
        await ok("unsubscribing the 1st", c.invoke("UnsubscribeFromTask", ids[0]));
        const fresh = uid("grp-new");
        await ok("subscribing after an unsubscribe", c.invoke("SubscribeToTask", fresh));
        await expectRefused(c.invoke("SubscribeToTask", uid("grp-102")), TOO_MANY("SubscribeToTask"));
        // The subscriptions still work, and the connection is fine.
        const r = record(c, ["TaskProgress"]);
        await groupServer.publish("tasks", `vkey.${vkey}.TaskProgress`, { taskId: fresh, taskType: "grp", percentComplete: 5 });
        await r.until((l) => l.length >= 1);
        assert.equal(c.state, HubConnectionState.Connected);
        await stop(c);
        assertNoPanic(groupServer);
    });

    test("SubscribeToWebhooks: two calls of 50 long URLs fill 100, a third with new URLs is refused; re-subscribing succeeds", TEST_OPTS, async () => {
        const vkey = freshKey();
        const c = await groupServer.connect({ hub: "webhooks", token: await groupServer.mintToken({ vkey }) });
        const batch = (tag) =>
            Array.from({ length: 50 }, (_, i) => `https://hooks-${tag}-${i}.example.com/${"p".repeat(240)}/${uid("w")}`);
        const a = batch("a");
        const b = batch("b");
        const cc = batch("c");
        await ok("the 1st batch of 50 URLs", c.invoke("SubscribeToWebhooks", a));
        await ok("the 2nd batch of 50 URLs", c.invoke("SubscribeToWebhooks", b));
        await expectRefused(c.invoke("SubscribeToWebhooks", cc), TOO_MANY("SubscribeToWebhooks"));
        await ok("re-subscribing the 1st batch", c.invoke("SubscribeToWebhooks", a));
        await ok("unsubscribing the 1st batch", c.invoke("UnsubscribeFromWebhooks", a));
        await ok("the 3rd batch after the unsubscribe", c.invoke("SubscribeToWebhooks", cc));
        assert.equal(c.state, HubConnectionState.Connected);
        await stop(c);
        assertNoPanic(groupServer);
    });
});

describe("SSE slow consumer", () => {
    test("an SSE client that stops reading is closed by the server within write_timeout + 5 s", TEST_OPTS, async (t) => {
        const vkey = freshKey();
        const jwt = await server.mintToken({ vkey });
        const neg = await server.negotiate({ headers: bearer(jwt) });
        assert.equal(neg.status, 200, neg.text);
        const id = encodeURIComponent(neg.body.connectionToken);
        const socket = await tcpConnect(server.port);
        socket.write(
            `GET /hubs/tasks?id=${id} HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nAccept: text/event-stream\r\n` +
                `Authorization: Bearer ${jwt}\r\n\r\n`,
        );
        const waitText = async (needle, ms = 5000) => {
            const deadline = Date.now() + ms;
            while (!socket.received.toString("utf8").includes(needle)) {
                if (socket.closedAt || Date.now() > deadline) {
                    throw new Error(`no ${JSON.stringify(needle)} on the stream: ${socket.received.toString("utf8").slice(0, 500)}`);
                }
                await sleep(10);
            }
        };
        await waitText("\r\n\r\n");
        assert.match(socket.received.toString("latin1"), /^HTTP\/1\.1 200/);
        const post = (body) =>
            fetch(`${server.url}/hubs/tasks?id=${id}`, { method: "POST", headers: bearer(jwt), body }).then((r) => r.status);
        assert.equal(await post(JSON.stringify({ protocol: "json", version: 1 }) + RS), 200);
        await waitText("data: {}");
        const taskId = uid("sse-slow");
        assert.equal(await post(JSON.stringify({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [taskId] }) + RS), 200);
        await waitText('"type":3');

        socket.pause(); // never reads again
        const filler = "s".repeat(100_000);
        const started = Date.now();
        let published = 0;
        for (let i = 0; i < 100; i++) {
            if (i % 10 === 0 && socket.closedAt) break;
            await server.publish("tasks", `vkey.${vkey}.TaskProgress`, { taskId, taskType: "bulk", percentComplete: i % 101, message: `${i}:${filler}` });
            published += 1;
        }
        const publishedAt = Date.now();
        const closedAt = await waitServerClose(server.port, socket, (WRITE_TIMEOUT_S + 5) * 1000);
        socket.destroy();
        t.diagnostic(
            `${published} events of 100 KB published in ${publishedAt - started} ms; ` +
                `closed ${closedAt === null ? "never" : `${closedAt - publishedAt} ms after the last publish`}`,
        );
        assert.ok(closedAt !== null, `the SSE stream is still open ${WRITE_TIMEOUT_S + 5} s after the last publish`);
        await server.assertServes({ vkey: freshKey() });
        assertNoPanic(server);
    });
});

describe("hostile publishes", () => {
    test("a 1.1 MB publish answers 413; subscribers stay connected and receive the next small event", TEST_OPTS, async () => {
        const vkey = freshKey();
        const c = await server.connect({ token: await server.mintToken({ vkey }) });
        const taskId = uid("big");
        await invoke(c, "SubscribeToTask", taskId);
        const r = record(c, ["TaskProgress"]);
        const res = await server.publishRaw({
            hub: "tasks",
            routingKey: `vkey.${vkey}.TaskProgress`,
            payload: { taskId, taskType: "big", percentComplete: 1, message: "B".repeat(1_100_000) },
        });
        assert.equal(res.status, 413, `answered ${res.status}: ${String(res.text).slice(0, 200)}`);
        await server.publish("tasks", `vkey.${vkey}.TaskProgress`, { taskId, taskType: "big", percentComplete: 2, message: "small" });
        await r.until((l) => l.some((e) => e.args[2] === "small"), 5000, "the small event");
        assert.deepEqual(r.of("TaskProgress"), [[taskId, 2, "small"]], "only the small event arrived");
        assert.equal(c.state, HubConnectionState.Connected);
        await stop(c);
        assertNoPanic(server);
    });

    test("5000 publishes with distinct invalid hub and event names answer 400 and grow /metrics by < 20 KB", TEST_OPTS, async (t) => {
        const metrics = async () => {
            const r = await timedFetch(`${server.url}/metrics`, {}, 5000);
            assert.equal(r.status, 200);
            return r.body.length;
        };
        const before = await metrics();
        const statuses = new Map();
        const N = 5000;
        let next = 0;
        const worker = async () => {
            for (;;) {
                const i = next++;
                if (i >= N) return;
                const body =
                    i % 2 === 0
                        ? { hub: `nohub-${i}-${uid("h")}`, routingKey: "vkey.1.TaskProgress", payload: { taskId: "a", taskType: "b", percentComplete: 1 } }
                        : { hub: "tasks", routingKey: `vkey.1.NoSuchEvent${i}x${uid("e").replace(/-/g, "")}`, payload: {} };
                const res = await fetch(`${server.url}/api/v1/publish`, {
                    method: "POST",
                    headers: { "X-API-Key": MASTER_KEY, "Content-Type": "application/json" },
                    body: JSON.stringify(body),
                });
                await res.arrayBuffer();
                statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
            }
        };
        await Promise.all(Array.from({ length: 32 }, worker));
        const after = await metrics();
        t.diagnostic(`statuses ${JSON.stringify([...statuses])}; /metrics ${before} -> ${after} bytes`);
        assert.deepEqual([...statuses], [[400, N]], "every invalid publish answers 400");
        assert.ok(after - before < 20 * 1024, `/metrics grew by ${after - before} bytes`);
        assertNoPanic(server);
    });
});
