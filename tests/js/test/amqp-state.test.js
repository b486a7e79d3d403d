// State shared across processes over RabbitMQ (contract section 3): budget alert cooldowns with two routers
// (the spend queue has a single active consumer), provider health replayed from the state stream by an edge
// that starts later, and RequestStatistics answering alike on two edges.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import { record, uid, sleep, withTimeout, MASTER_KEY } from "./harness.js";
import {
    AmqpWorld,
    probeBroker,
    probeRabbitmqctl,
    skipUnlessBroker,
    requireBroker,
    printStderrOnFailure,
    eventually,
} from "./amqp-harness.js";

const broker = await probeBroker();
const ctl = broker.ok ? await probeRabbitmqctl() : broker;
const SETTLE_MS = 1000;
const ADMIN = "admin-notifications";
const byProvider = (a, b) => (a.provider < b.provider ? -1 : a.provider > b.provider ? 1 : 0);

describe("RabbitMQ shared state: alert cooldown, provider health, webhook statistics", { skip: skipUnlessBroker(broker, ctl) }, () => {
    const world = new AmqpWorld();
    let router1;
    let router2;
    let edgeA;
    let edgeB;
    const early = {
        provider: "early-provider",
        status: "unhealthy",
        message: "reported before any edge ran",
        checkedAt: "2026-01-02T03:04:05Z",
    };

    before(async () => {
        requireBroker(broker, ctl);
        await world.open();
        // One after the other: router 1 is the spend queue's single active consumer.
        router1 = await world.start("router", { name: "router 1" });
        router2 = await world.start("router", { name: "router 2" });
        // Provider health reported while no edge runs at all.
        await world.publish(ADMIN, "admin.ProviderHealthStatus", early, { messageId: uid("early") });
        const q = world.routerQueue(ADMIN);
        await eventually(async () => {
            const row = (await world.queues())[q];
            return row && row.messages === 0;
        }, 10_000, `the routers took the early ProviderHealthStatus off ${q}`);
        [edgeA, edgeB] = await Promise.all([world.start("edge", { node: "a" }), world.start("edge", { node: "b" })]);
    });
    after(async () => {
        await world.cleanup();
    });
    printStderrOnFailure(afterEach, world);

    async function client(edge, vkey, hub, protocol = "json") {
        const token = await edge.mintToken({ vkey });
        return edge.connect({ hub, token, protocol });
    }

    async function admin(edge, protocol = "json") {
        const c = await edge.connect({ hub: ADMIN, token: MASTER_KEY, protocol, start: false });
        const initial = new Promise((resolve) => c.on("InitialProviderHealth", (...args) => resolve(args)));
        await withTimeout(c.start(), 10_000, "admin connect");
        c.initial = withTimeout(initial, 5000, "InitialProviderHealth");
        return c;
    }

    const spendUpdate = (u) => ({ amount: 1, totalSpend: Math.round(u * 10000) / 100, budget: 100, budgetUtilization: u });
    // Each 0.49 re-arms the thresholds and each 0.8 crosses 0.75 again; the pattern gives both kinds to each
    // of two consumers taking turns, so only a shared decision (the single active consumer) keeps it at one.
    const PATTERN = [0.49, 0.8, 0.8, 0.49];

    async function spendSeries(vkey, n) {
        const ids = [];
        for (let i = 0; i < n; i++) {
            const id = uid("spend");
            ids.push(id);
            await world.publish("spend", `vkey.${vkey}.SpendUpdate`, spendUpdate(PATTERN[i % PATTERN.length]), { messageId: id });
        }
        return ids;
    }

    test("the spend queue has one active consumer of two; the tasks queue two active", async () => {
        const spend = await world.consumersOf(world.routerQueue("spend"));
        assert.equal(spend.length, 2, `two consumers on the spend queue: ${JSON.stringify(spend)}`);
        assert.deepEqual(spend.map((c) => c.active).sort(), [false, true], `one active: ${JSON.stringify(spend)}`);
        const tasks = await world.consumersOf(world.routerQueue("tasks"));
        assert.deepEqual(tasks.map((c) => c.active), [true, true], `both active on tasks: ${JSON.stringify(tasks)}`);
    });

    test("50 SpendUpdates alternating 0.49 / 0.8 with two routers: exactly one budget_75_percent alert", async () => {
        const onA = await client(edgeA, "7", "spend");
        const onB = await client(edgeB, "7", "spend", "messagepack");
        const logs = [onA, onB].map((c) => record(c, ["SpendUpdate", "BudgetAlert"]));
        await spendSeries("7", 50);
        for (const [i, r] of logs.entries()) {
            await r.until((l) => r.count("SpendUpdate") >= 50, 15_000, `50 SpendUpdates on client ${i}`);
        }
        await sleep(SETTLE_MS);
        for (const [i, r] of logs.entries()) {
            assert.equal(r.count("SpendUpdate"), 50, `client ${i}: every SpendUpdate once`);
            const alerts = r.of("BudgetAlert");
            assert.deepEqual(alerts.map((a) => a[0]), ["budget_75_percent"], `client ${i}: exactly one alert`);
            const data = alerts[0][1];
            assert.equal(data.threshold, 0.75, `client ${i}: threshold`);
            assert.equal(data.budget, 100, `client ${i}: budget`);
            assert.equal(data.currentSpend, 80, `client ${i}: currentSpend`);
            assert.ok(Math.abs(data.percentageUsed - 80) < 1e-9, `client ${i}: percentageUsed ${data.percentageUsed}`);
        }
        for (const c of [onA, onB]) await c.stop();
    });

    test("the cooldown still holds when the spend queue fails over to the other router", async () => {
        const c = await client(edgeA, "8", "spend");
        const r = record(c, ["SpendUpdate", "BudgetAlert"]);
        await spendSeries("8", 4); // 0.49, 0.8 (alert), 0.8, 0.49 (re-armed)
        await r.until(() => r.count("SpendUpdate") >= 4, 10_000, "4 SpendUpdates");
        await sleep(SETTLE_MS);
        assert.deepEqual(r.of("BudgetAlert").map((a) => a[0]), ["budget_75_percent"], "the first crossing alerts");

        const q = world.routerQueue("spend");
        const before = await world.consumersOf(q);
        const activeBefore = before.find((x) => x.active);
        await router1.kill();
        const afterKill = await eventually(async () => {
            const list = await world.consumersOf(q);
            return list.length === 1 && list[0].active ? list : null;
        }, 10_000, `router 2 becoming the active consumer of ${q}`);
        assert.notEqual(afterKill[0].channel_pid, activeBefore.channel_pid, "router 1 was the active consumer; router 2 took over");

        await world.publish("spend", "vkey.8.SpendUpdate", spendUpdate(0.8), { messageId: uid("spend") }); // crosses 0.75 again
        await r.until(() => r.count("SpendUpdate") >= 5, 10_000, "the 5th SpendUpdate");
        await sleep(SETTLE_MS);
        assert.deepEqual(
            r.of("BudgetAlert").map((a) => a[0]),
            ["budget_75_percent"],
            "no second budget_75_percent within the cooldown after the failover",
        );
        await c.stop();
        router1 = await world.start("router", { name: "router 1 (restarted)" });
    });

    test("provider health reported before an edge started is in InitialProviderHealth on it, and on every edge", async () => {
        const watcher = await admin(edgeA);
        assert.deepEqual(await watcher.initial, [[early]], "edge a started after the early report");
        const later = { provider: "later-provider", status: "degraded", message: "slow answers", checkedAt: "2026-01-02T04:05:06Z" };
        const got = record(watcher, ["ProviderHealthStatus"]);
        await world.publish(ADMIN, "admin.ProviderHealthStatus", later, { messageId: uid("later") });
        await got.until((l) => l.length >= 1, 10_000, "ProviderHealthStatus on edge a");
        assert.deepEqual(got.log[0].args, [later.provider, later.status, later.message, later.checkedAt]);

        const edgeC = await world.start("edge", { node: "c" });
        const expected = [early, later].sort(byProvider);
        for (const [name, edge] of [
            ["edge c (started after both reports)", edgeC],
            ["edge b", edgeB],
            ["edge a", edgeA],
        ]) {
            const c = await admin(edge, name === "edge b" ? "messagepack" : "json");
            const [providers] = await c.initial;
            assert.deepEqual([...providers].sort(byProvider), expected, `${name}: InitialProviderHealth`);
            assert.deepEqual([...(await c.invoke("RefreshProviderHealth"))].sort(byProvider), expected, `${name}: RefreshProviderHealth`);
            await c.stop();
        }
        await watcher.stop();
    });

    test("RequestStatistics answers the same on both edges", async () => {
        const url = `https://hooks.example.com/${uid("wh")}`;
        const events = ["DeliveryAttempted", "DeliverySucceeded", "DeliveryFailed", "RetryScheduled"];
        const watchers = [await client(edgeA, "7", "webhooks"), await client(edgeB, "7", "webhooks", "messagepack")];
        for (const w of watchers) await w.invoke("SubscribeToWebhooks", [url]);
        const logs = watchers.map((w) => record(w, events));
        const series = [
            ["DeliveryAttempted", { attemptNumber: 1, timestamp: "2026-01-02T03:00:00Z" }],
            ["DeliverySucceeded", { statusCode: 200, responseTimeMs: 100, timestamp: "2026-01-02T03:00:01Z" }],
            ["DeliveryAttempted", { attemptNumber: 1, timestamp: "2026-01-02T03:00:02Z" }],
            ["DeliveryFailed", { statusCode: 500, error: "Internal Server Error", timestamp: "2026-01-02T03:00:03Z" }],
            ["RetryScheduled", { attemptNumber: 2, timestamp: "2026-01-02T03:00:04Z" }],
            ["DeliveryAttempted", { attemptNumber: 2, timestamp: "2026-01-02T03:00:05Z" }],
            ["DeliverySucceeded", { statusCode: 200, responseTimeMs: 300, timestamp: "2026-01-02T03:00:06Z" }],
        ];
        for (const [event, body] of series) {
            await world.publish("webhooks", `vkey.7.${event}`, { url, ...body }, { messageId: uid("wh") });
        }
        for (const [i, r] of logs.entries()) await r.until((l) => l.length >= series.length, 10_000, `the series on watcher ${i}`);

        const expectedCounts = { url, attempts: 3, successes: 2, failures: 1, retriesScheduled: 1, averageResponseTimeMs: 200 };
        const ask = (w) => w.invoke("RequestStatistics", url);
        const counts = ({ successRate, lastSuccessAt, lastFailureAt, since, ...rest }) => rest;
        // The statistics travel on the state stream, apart from the deliveries: give each edge a moment.
        const answers = [];
        for (const [i, w] of watchers.entries()) {
            let last;
            // Polled gently: hub invocations are rate limited (10/s).
            answers[i] = await eventually(
                async () => {
                    last = await ask(w);
                    return isDeepStrictEqual(counts(last), expectedCounts) ? last : null;
                },
                3000,
                () => `edge ${i === 0 ? "a" : "b"}: RequestStatistics reaching ${JSON.stringify(expectedCounts)} (last: ${JSON.stringify(last)})`,
                250,
            );
        }
        const [a, b] = answers;
        assert.ok(Math.abs(a.successRate - 2 / 3) < 1e-9, `successRate ${a.successRate}`);
        const { since: sinceA, ...restA } = a;
        const { since: sinceB, ...restB } = b;
        assert.deepEqual(restB, restA, "edge b answers as edge a (all but since)");
        assert.ok(Math.abs(Date.parse(sinceA) - Date.parse(sinceB)) < 10_000, `since ${sinceA} vs ${sinceB}`);
        // Unknown URL: zeros on both.
        const unknown = `https://hooks.example.com/${uid("none")}`;
        const [za, zb] = await Promise.all(watchers.map((w) => w.invoke("RequestStatistics", unknown)));
        assert.deepEqual(counts(zb), counts(za));
        assert.equal(za.attempts, 0);
        for (const w of watchers) await w.stop();
    });
});
