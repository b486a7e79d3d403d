// The webhooks hub (contract section 3): URL subscriptions, deliveries per URL, RequestStatistics.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, record, invokeError, uid, sleep, HUB_EXCEPTION } from "./harness.js";

const server = useServer();
const SETTLE_MS = 400;
const RFC3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$/;
const DELIVERY_EVENTS = ["DeliveryAttempted", "DeliverySucceeded", "DeliveryFailed", "RetryScheduled"];

let keyCounter = 0;
function freshKey() {
    keyCounter += 1;
    return String(300000 + (process.pid % 1000) * 100 + keyCounter);
}

async function hooks(vkey, protocol = "json") {
    const token = await server.mintToken({ vkey });
    return server.connect({ hub: "webhooks", token, protocol });
}

const freshUrl = (n = "") => `https://hooks.example.com/${uid("wh")}${n}`;

test("SubscribeToWebhooks takes 50 URLs, refuses 51 and invalid URLs", async () => {
    const vkey = freshKey();
    const c = await hooks(vkey);
    const urls = Array.from({ length: 50 }, (_, i) => freshUrl(`/n${i}`));
    const result = await c.invoke("SubscribeToWebhooks", urls);
    assert.ok(result === undefined || result === null, "void");
    const r = record(c, ["DeliverySucceeded"]);
    for (const url of [urls[0], urls[49]]) {
        await server.publish("webhooks", `vkey.${vkey}.DeliverySucceeded`, { url, statusCode: 204, responseTimeMs: 9 });
    }
    await r.until((l) => l.length >= 2);
    assert.deepEqual(r.log.map((e) => e.args[0]), [urls[0], urls[49]]);

    const tooMany = Array.from({ length: 51 }, (_, i) => freshUrl(`/m${i}`));
    assert.equal(
        (await invokeError(c, "SubscribeToWebhooks", tooMany)).message,
        HUB_EXCEPTION("SubscribeToWebhooks", "Too many webhook URLs (at most 50)"),
    );
    // The refused call subscribed nothing.
    const r2 = record(c, ["DeliveryAttempted"]);
    await server.publish("webhooks", `vkey.${vkey}.DeliveryAttempted`, { url: tooMany[0], attemptNumber: 1 });
    await server.publish("webhooks", `vkey.${vkey}.DeliveryAttempted`, { url: urls[1], attemptNumber: 1 });
    await r2.until((l) => l.length >= 1);
    await sleep(SETTLE_MS);
    assert.deepEqual(r2.log.map((e) => e.args[0]), [urls[1]], "none of the 51 was subscribed");

    for (const bad of ["not a url", "/relative/hook", "hooks.example.com/no-scheme", "ftp://files.example.com/x", "ws://hooks.example.com/x"]) {
        assert.equal(
            (await invokeError(c, "SubscribeToWebhooks", [freshUrl(), bad])).message,
            HUB_EXCEPTION("SubscribeToWebhooks", "Invalid webhook URL"),
            JSON.stringify(bad),
        );
    }
    await c.stop();
});

test("deliveries per URL; UnsubscribeFromWebhooks stops them", async () => {
    const vkey = freshKey();
    const c = await hooks(vkey, "messagepack");
    const u1 = freshUrl();
    const u2 = freshUrl();
    const u3 = freshUrl();
    await c.invoke("SubscribeToWebhooks", [u1, u2]);
    const r = record(c, DELIVERY_EVENTS);
    await server.publish("webhooks", `vkey.${vkey}.DeliveryAttempted`, { url: u1, attemptNumber: 1 });
    await server.publish("webhooks", `vkey.${vkey}.DeliveryAttempted`, { url: u3, attemptNumber: 1 });
    await server.publish("webhooks", `vkey.${vkey}.DeliveryFailed`, { url: u2, error: "timeout", statusCode: 504 });
    await r.until((l) => l.length >= 2);
    await c.invoke("UnsubscribeFromWebhooks", [u1]);
    await server.publish("webhooks", `vkey.${vkey}.RetryScheduled`, { url: u1, attemptNumber: 2 });
    await server.publish("webhooks", `vkey.${vkey}.RetryScheduled`, { url: u2, attemptNumber: 2 });
    await r.until((l) => l.length >= 3);
    await sleep(SETTLE_MS);
    assert.deepEqual(r.log, [
        { event: "DeliveryAttempted", args: [u1, { attemptNumber: 1 }] },
        { event: "DeliveryFailed", args: [u2, { error: "timeout", statusCode: 504 }] },
        { event: "RetryScheduled", args: [u2, { attemptNumber: 2 }] },
    ]);
    await c.stop();
});

/** Publishes a series of delivery events for `url` of `vkey` and waits until a subscriber saw them all. */
async function publishSeries(vkey, url, series) {
    const watcher = await hooks(vkey);
    await watcher.invoke("SubscribeToWebhooks", [url]);
    const r = record(watcher, DELIVERY_EVENTS);
    for (const [event, body] of series) {
        await server.publish("webhooks", `vkey.${vkey}.${event}`, { url, ...body });
    }
    await r.until((l) => l.length >= series.length, 5000, "the whole series");
    await watcher.stop();
}

for (const protocol of ["json", "messagepack"]) {
    test(`RequestStatistics counts attempts, successes, failures, retries; rate and average (${protocol})`, async () => {
        const vkey = freshKey();
        const url = freshUrl();
        await publishSeries(vkey, url, [
            ["DeliveryAttempted", { attemptNumber: 1, timestamp: "2025-11-25T21:00:00Z" }],
            ["DeliverySucceeded", { statusCode: 200, responseTimeMs: 100, timestamp: "2025-11-25T21:00:01Z" }],
            ["DeliveryAttempted", { attemptNumber: 1, timestamp: "2025-11-25T21:00:02Z" }],
            ["DeliveryFailed", { statusCode: 500, error: "Internal Server Error", timestamp: "2025-11-25T21:00:03Z" }],
            ["RetryScheduled", { attemptNumber: 2, timestamp: "2025-11-25T21:00:04Z" }],
            ["DeliveryAttempted", { attemptNumber: 2, timestamp: "2025-11-25T21:00:05Z" }],
            ["DeliverySucceeded", { statusCode: 200, responseTimeMs: 300, timestamp: "2025-11-25T21:00:06Z" }],
        ]);
        const c = await hooks(vkey, protocol); // not subscribed to the URL: statistics are per key
        const stats = await c.invoke("RequestStatistics", url);
        const { successRate, lastSuccessAt, lastFailureAt, since, ...counts } = stats;
        assert.deepEqual(counts, {
            url,
            attempts: 3,
            successes: 2,
            failures: 1,
            retriesScheduled: 1,
            averageResponseTimeMs: 200,
        });
        assert.ok(Math.abs(successRate - 2 / 3) < 1e-9, `successRate ${successRate}`);
        assert.match(lastSuccessAt, RFC3339_UTC);
        assert.match(lastFailureAt, RFC3339_UTC);
        assert.match(since, RFC3339_UTC);
        assert.ok(Date.parse(lastSuccessAt) >= Date.parse(lastFailureAt), "the last success came after the last failure");

        // More events update the answer.
        await publishSeries(vkey, url, [["DeliveryFailed", { error: "refused" }]]);
        const again = await c.invoke("RequestStatistics", url);
        assert.equal(again.failures, 2);
        assert.equal(again.successes, 2);
        assert.equal(again.successRate, 0.5);
        await c.stop();
    });
}

test("RequestStatistics: zeros and nulls for an unknown URL; per key", async () => {
    const k7 = freshKey();
    const k9 = freshKey();
    const url = freshUrl();
    await publishSeries(k7, url, [
        ["DeliveryAttempted", { attemptNumber: 1 }],
        ["DeliverySucceeded", { statusCode: 200, responseTimeMs: 50 }],
    ]);
    const zeros = (u) => ({
        url: u,
        attempts: 0,
        successes: 0,
        failures: 0,
        retriesScheduled: 0,
        successRate: null,
        averageResponseTimeMs: null,
        lastSuccessAt: null,
        lastFailureAt: null,
    });
    const c9 = await hooks(k9);
    const unknown = freshUrl();
    const { since: since1, ...s1 } = await c9.invoke("RequestStatistics", unknown);
    assert.deepEqual(s1, zeros(unknown));
    assert.match(since1, RFC3339_UTC);
    const { since: since2, ...s2 } = await c9.invoke("RequestStatistics", url);
    assert.deepEqual(s2, zeros(url), "key 9 sees nothing of key 7's URL");
    assert.match(since2, RFC3339_UTC);
    // Positive control: key 7 sees its events.
    const c7 = await hooks(k7);
    const s7 = await c7.invoke("RequestStatistics", url);
    assert.equal(s7.attempts, 1);
    assert.equal(s7.successes, 1);
    assert.equal(s7.failures, 0);
    assert.equal(s7.successRate, 1);
    assert.equal(s7.averageResponseTimeMs, 50);
    assert.equal(s7.lastFailureAt, null);
    assert.match(s7.lastSuccessAt, RFC3339_UTC);
    await c7.stop();
    await c9.stop();
});

test("RequestStatistics: successRate null only while there are neither successes nor failures", async () => {
    const vkey = freshKey();
    const url = freshUrl();
    await publishSeries(vkey, url, [
        ["DeliveryAttempted", { attemptNumber: 1 }],
        ["RetryScheduled", { attemptNumber: 2 }],
    ]);
    const c = await hooks(vkey);
    const s = await c.invoke("RequestStatistics", url);
    assert.equal(s.attempts, 1);
    assert.equal(s.retriesScheduled, 1);
    assert.equal(s.successRate, null, "no successes and no failures");
    assert.equal(s.averageResponseTimeMs, null);
    await publishSeries(vkey, url, [["DeliveryFailed", { error: "x" }]]);
    const s2 = await c.invoke("RequestStatistics", url);
    assert.equal(s2.successRate, 0);
    assert.equal(s2.averageResponseTimeMs, null, "failures have no response time average");
    await c.stop();
});
