// Tenant isolation (contract section 2): every group of a tenant hub lives inside its virtual key.
// A connection in several target groups of one event receives it once. URLs that sanitize alike
// never share webhook deliveries.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, record, uid, sleep, MASTER_KEY } from "./harness.js";

const server = useServer();
const SETTLE_MS = 400;

let keyCounter = 0;
function freshKey() {
    keyCounter += 1;
    return String(800000 + (process.pid % 1000) * 100 + keyCounter);
}

async function tenant(hub, vkey, protocol = "json") {
    const token = await server.mintToken({ vkey });
    return server.connect({ hub, token, protocol });
}

/**
 * Two keys A and B, each with a connection subscribed to the same id (via `subscribe`), plus an
 * unsubscribed connection of A. Publishes for A, then for B, then for A again; each subscriber must
 * see exactly its own key's events, the unsubscribed one nothing (unless `wholeKey`).
 */
async function twoKeys({ hub, event, subscribe, body, argTag, wholeKey = false }) {
    const ka = freshKey();
    const kb = freshKey();
    const a = await tenant(hub, ka);
    const b = await tenant(hub, kb);
    const idle = await tenant(hub, ka);
    if (subscribe) {
        await subscribe(a);
        await subscribe(b);
    }
    const ra = record(a, [event]);
    const rb = record(b, [event]);
    const ri = record(idle, [event]);

    await server.publish(hub, `vkey.${ka}.${event}`, body("A1"));
    await ra.until((l) => l.length >= 1, 5000, `A's first ${event}`);
    await server.publish(hub, `vkey.${kb}.${event}`, body("B1"));
    await rb.until((l) => l.length >= 1, 5000, `B's ${event}`);
    await server.publish(hub, `vkey.${ka}.${event}`, body("A2"));
    await ra.until((l) => l.length >= 2, 5000, `A's second ${event}`);
    await sleep(SETTLE_MS);

    assert.deepEqual(ra.log.map((e) => argTag(e.args)), ["A1", "A2"], `${hub}: key A sees only its events`);
    assert.deepEqual(rb.log.map((e) => argTag(e.args)), ["B1"], `${hub}: key B sees only its event`);
    if (wholeKey) {
        assert.deepEqual(ri.log.map((e) => argTag(e.args)), ["A1", "A2"], `${hub}: every connection of key A`);
    } else {
        assert.deepEqual(ri.log, [], `${hub}: a connection of key A without the subscription sees nothing`);
    }
    for (const c of [a, b, idle]) await c.stop();
}

test("tasks task-{id}: same task id under two keys never crosses", async () => {
    const taskId = uid("iso-task");
    await twoKeys({
        hub: "tasks",
        event: "TaskProgress",
        subscribe: (c) => c.invoke("SubscribeToTask", taskId),
        body: (tag) => ({ taskId, taskType: "iso", percentComplete: 10, message: tag }),
        argTag: (args) => args[2],
    });
});

test("tasks task-type-{type}: same task type under two keys never crosses", async () => {
    const taskType = uid("iso-type");
    await twoKeys({
        hub: "tasks",
        event: "TaskProgress",
        subscribe: (c) => c.invoke("SubscribeToTaskType", taskType),
        body: (tag) => ({ taskId: uid("t"), taskType, percentComplete: 20, message: tag }),
        argTag: (args) => args[2],
    });
});

test("video-generation video-{requestId}: same request id under two keys never crosses", async () => {
    const requestId = uid("iso-vid");
    await twoKeys({
        hub: "video-generation",
        event: "VideoGenerationProgress",
        subscribe: (c) => c.invoke("SubscribeToRequest", requestId),
        body: (tag) => ({ requestId, percentComplete: 30, message: tag }),
        argTag: (args) => args[0].message,
    });
});

test("image-generation image-{taskId}: same task id under two keys never crosses", async () => {
    const taskId = uid("iso-img");
    await twoKeys({
        hub: "image-generation",
        event: "ImageGenerationProgress",
        subscribe: (c) => c.invoke("SubscribeToTask", taskId),
        body: (tag) => ({ taskId, percentComplete: 40, message: tag }),
        argTag: (args) => args[0].message,
    });
});

test("webhooks webhook-{url}: same URL under two keys never crosses", async () => {
    const url = `https://hooks.example.com/${uid("iso")}`;
    await twoKeys({
        hub: "webhooks",
        event: "DeliveryAttempted",
        subscribe: (c) => c.invoke("SubscribeToWebhooks", [url]),
        body: (tag) => ({ url, tag, attemptNumber: 1 }),
        argTag: (args) => {
            assert.equal(args[0], url);
            return args[1].tag;
        },
    });
});

test("spend vkey-{id}: a SpendUpdate reaches every connection of its key and no other key", async () => {
    await twoKeys({
        hub: "spend",
        event: "SpendUpdate",
        body: (tag) => ({ amount: 0.5, totalSpend: 1.5, tag }),
        argTag: (args) => args[0].tag,
        wholeKey: true,
    });
});

test("notifications vkey audience: reaches every connection of its key and no other key", async () => {
    await twoKeys({
        hub: "notifications",
        event: "ServiceRestored",
        body: (tag) => ({ service: tag }),
        argTag: (args) => args[0],
        wholeKey: true,
    });
});

test("notifications all audience: reaches both keys, once each", async () => {
    const ka = freshKey();
    const kb = freshKey();
    const a = await tenant("notifications", ka);
    const b = await tenant("notifications", kb, "messagepack");
    const ra = record(a, ["SystemAnnouncement"]);
    const rb = record(b, ["SystemAnnouncement"]);
    const body = { title: "Hello", message: uid("everyone"), severity: "info" };
    await server.publish("notifications", "all.SystemAnnouncement", body);
    await ra.until((l) => l.length >= 1);
    await rb.until((l) => l.length >= 1);
    await sleep(SETTLE_MS);
    assert.deepEqual(ra.log.map((e) => e.args), [["Hello", body.message, "info"]]);
    assert.deepEqual(rb.log.map((e) => e.args), [["Hello", body.message, "info"]]);
    // Tenant hubs other than notifications do not take `all`.
    const res = await server.publishRaw({ hub: "tasks", routingKey: "all.TaskProgress", payload: { taskId: "x", taskType: "y", percentComplete: 1 } });
    assert.equal(res.status, 400, res.text);
    await a.stop();
    await b.stop();
});

for (const protocol of ["json", "messagepack"]) {
    test(`one copy: task-{id} + task-type-{type} (${protocol})`, async () => {
        const vkey = freshKey();
        const c = await tenant("tasks", vkey, protocol);
        const taskId = uid("once");
        const taskType = uid("once-type");
        await c.invoke("SubscribeToTask", taskId);
        await c.invoke("SubscribeToTaskType", taskType);
        const r = record(c, ["TaskStarted", "TaskCompleted"]);
        await server.publish("tasks", `vkey.${vkey}.TaskStarted`, { taskId, taskType });
        await server.publish("tasks", `vkey.${vkey}.TaskCompleted`, { taskId, taskType, result: { ok: true } });
        await r.until((l) => l.length >= 2);
        await sleep(SETTLE_MS);
        assert.deepEqual(r.log, [
            { event: "TaskStarted", args: [taskId, taskType, null] },
            { event: "TaskCompleted", args: [taskId, { ok: true }] },
        ]);
        await c.stop();
    });

    test(`one copy: admin + admin-provider-{x}, admin + admin-vkey-{id} (${protocol})`, async () => {
        const c = await server.connect({ hub: "admin-notifications", token: MASTER_KEY, protocol });
        const provider = uid("prov");
        const keyId = Number(freshKey());
        await c.invoke("SubscribeToProvider", provider);
        await c.invoke("SubscribeToVirtualKey", keyId);
        const r = record(c, ["ProviderHealthStatus", "VirtualKeyCreated"]);
        await server.publish("admin-notifications", "admin.ProviderHealthStatus", {
            provider,
            status: "degraded",
            message: "slow",
            checkedAt: "2025-11-25T21:00:00Z",
        });
        await server.publish("admin-notifications", "admin.VirtualKeyCreated", { virtualKeyId: keyId, keyName: "k" });
        await r.until((l) => l.length >= 2);
        await sleep(SETTLE_MS);
        assert.deepEqual(r.log, [
            { event: "ProviderHealthStatus", args: [provider, "degraded", "slow", "2025-11-25T21:00:00Z"] },
            { event: "VirtualKeyCreated", args: [{ virtualKeyId: keyId, keyName: "k" }] },
        ]);
        await c.stop();
    });
}

test("webhook URLs that sanitize alike never share deliveries", async () => {
    const vkey = freshKey();
    const n = uid("s").replace(/[^a-z0-9]/gi, "");
    // All of these sanitize to webhook-api-example-com-hook<n> (host and path, lower-cased, runs of
    // other characters turned into '-'), yet they are different URLs.
    const urls = [
        `https://api.example.com/hook${n}`,
        `https://api-example.com/hook${n}`,
        `https://api.example.com/hook${n}?tenant=1`,
        `http://api.example.com/hook${n}`,
        `https://api_example.com/hook${n}`,
    ];
    const conns = [];
    const recs = [];
    for (const url of urls) {
        const c = await tenant("webhooks", vkey);
        await c.invoke("SubscribeToWebhooks", [url]);
        conns.push(c);
        recs.push(record(c, ["DeliverySucceeded"]));
    }
    for (const [i, url] of urls.entries()) {
        await server.publish("webhooks", `vkey.${vkey}.DeliverySucceeded`, { url, statusCode: 200, responseTimeMs: i + 1 });
    }
    for (const [i, r] of recs.entries()) await r.until((l) => l.length >= 1, 5000, `delivery for ${urls[i]}`);
    await sleep(SETTLE_MS);
    for (const [i, r] of recs.entries()) {
        assert.deepEqual(
            r.log.map((e) => e.args),
            [[urls[i], { statusCode: 200, responseTimeMs: i + 1 }]],
            `subscriber of ${urls[i]} gets only its own URL's delivery`,
        );
    }
    // A connection subscribed to two colliding URLs gets each delivery exactly once.
    const both = await tenant("webhooks", vkey, "messagepack");
    await both.invoke("SubscribeToWebhooks", [urls[0], urls[1]]);
    const rb = record(both, ["DeliveryFailed"]);
    await server.publish("webhooks", `vkey.${vkey}.DeliveryFailed`, { url: urls[0], error: "e0" });
    await server.publish("webhooks", `vkey.${vkey}.DeliveryFailed`, { url: urls[1], error: "e1" });
    await server.publish("webhooks", `vkey.${vkey}.DeliveryFailed`, { url: urls[2], error: "e2" });
    await server.publish("webhooks", `vkey.${vkey}.DeliveryFailed`, { url: urls[0], error: "control" });
    await rb.until((l) => l.length >= 3, 5000, "both subscribed URLs' deliveries");
    await sleep(SETTLE_MS);
    assert.deepEqual(
        rb.log.map((e) => e.args),
        [
            [urls[0], { error: "e0" }],
            [urls[1], { error: "e1" }],
            [urls[0], { error: "control" }],
        ],
    );
    for (const c of [...conns, both]) await c.stop();
});
