// Derived BudgetAlerts and the alert cooldown (contract section 3), with the default 1 h cooldown.
// The cooldown expiring is tested in spend-cooldown.test.js (a server with a 3 s cooldown).
import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, record, sleep } from "./harness.js";

const server = useServer();
const SETTLE_MS = 500;
const SEVERITIES = ["info", "warning", "error", "critical"];
const RFC3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$/;

let keyCounter = 0;
function freshKey() {
    keyCounter += 1;
    return String(500000 + (process.pid % 1000) * 100 + keyCounter);
}

async function spendClient(vkey, protocol = "json") {
    const token = await server.mintToken({ vkey });
    const c = await server.connect({ hub: "spend", token, protocol });
    return { c, r: record(c, ["SpendUpdate", "BudgetAlert"]) };
}

let sent = new Map();
/** Publishes a SpendUpdate with budget 100 and the given utilization; returns how many were sent for the key. */
async function update(vkey, utilization) {
    const totalSpend = Math.round(utilization * 10000) / 100;
    await server.publish("spend", `vkey.${vkey}.SpendUpdate`, {
        amount: 0.5,
        totalSpend,
        budget: 100,
        budgetRemaining: Math.round((100 - totalSpend) * 100) / 100,
        budgetUtilization: utilization,
        provider: "openai",
        model: "gpt-4o",
        timestamp: new Date().toISOString(),
    });
    sent.set(vkey, (sent.get(vkey) ?? 0) + 1);
    return sent.get(vkey);
}

/** Waits until `r` has every SpendUpdate published for `vkey`, then a little more; returns the BudgetAlerts. */
async function settle(r, vkey) {
    const n = sent.get(vkey) ?? 0;
    await r.until((l) => l.filter((e) => e.event === "SpendUpdate").length >= n, 10_000, `${n} SpendUpdates`);
    await sleep(SETTLE_MS);
    return r.of("BudgetAlert");
}

function assertDerived(alert, { alertType, threshold, currentSpend, budget, percentageUsed }) {
    const [type, data] = alert;
    assert.equal(type, alertType);
    assert.deepEqual(
        Object.keys(data).sort(),
        ["budget", "currentSpend", "message", "percentageUsed", "severity", "threshold", "timestamp"],
        `data shape of ${alertType}: ${JSON.stringify(data)}`,
    );
    assert.equal(data.threshold, threshold, "threshold is a fraction");
    assert.equal(data.currentSpend, currentSpend);
    assert.equal(data.budget, budget);
    assert.equal(data.percentageUsed, percentageUsed, "percentageUsed is a percent");
    assert.ok(SEVERITIES.includes(data.severity), `severity ${data.severity}`);
    assert.equal(typeof data.message, "string");
    assert.ok(data.message.length > 0, "message is not empty");
    assert.match(data.timestamp, RFC3339_UTC);
    return data;
}

for (const protocol of ["json", "messagepack"]) {
    test(`crossing 0.75 sends budget_75_percent with the contract's data (${protocol})`, async () => {
        const vkey = freshKey();
        const { c, r } = await spendClient(vkey, protocol);
        await update(vkey, 0.785);
        let alerts = await settle(r, vkey);
        assert.equal(alerts.length, 1, `one alert (the highest crossed), got ${JSON.stringify(alerts)}`);
        const d75 = assertDerived(alerts[0], {
            alertType: "budget_75_percent",
            threshold: 0.75,
            currentSpend: 78.5,
            budget: 100,
            percentageUsed: 78.5,
        });
        // Staying between thresholds: nothing new.
        await update(vkey, 0.8);
        await update(vkey, 0.85);
        alerts = await settle(r, vkey);
        assert.equal(alerts.length, 1, `no alert without a crossing, got ${JSON.stringify(alerts)}`);
        // 0.90 and 1.00.
        await update(vkey, 0.95);
        alerts = await settle(r, vkey);
        assert.equal(alerts.length, 2, JSON.stringify(alerts));
        const d90 = assertDerived(alerts[1], {
            alertType: "budget_90_percent",
            threshold: 0.9,
            currentSpend: 95,
            budget: 100,
            percentageUsed: 95,
        });
        await update(vkey, 1.02);
        alerts = await settle(r, vkey);
        assert.equal(alerts.length, 3, JSON.stringify(alerts));
        const dEx = assertDerived(alerts[2], {
            alertType: "budget_exceeded",
            threshold: 1,
            currentSpend: 102,
            budget: 100,
            percentageUsed: 102,
        });
        // Severity never decreases as the budget is used up.
        const levels = [d75, d90, dEx].map((d) => SEVERITIES.indexOf(d.severity));
        assert.ok(levels[0] <= levels[1] && levels[1] <= levels[2], `severities ${[d75, d90, dEx].map((d) => d.severity)}`);
        await c.stop();
    });
}

test("a jump to 0.95 sends only budget_90_percent; the lower thresholds count as sent", async () => {
    const vkey = freshKey();
    const { c, r } = await spendClient(vkey);
    await update(vkey, 0.95);
    let alerts = await settle(r, vkey);
    assert.deepEqual(alerts.map((a) => a[0]), ["budget_90_percent"]);
    assertDerived(alerts[0], { alertType: "budget_90_percent", threshold: 0.9, currentSpend: 95, budget: 100, percentageUsed: 95 });
    // Falling back to between 0.5 and 0.9 and rising again crosses 0.75 and 0.5 upwards only if they were
    // re-armed, which they are not (utilization never fell below the lowest threshold).
    await update(vkey, 0.6);
    await update(vkey, 0.8);
    alerts = await settle(r, vkey);
    assert.deepEqual(alerts.map((a) => a[0]), ["budget_90_percent"]);
    // Positive control: 1.0 still alerts.
    await update(vkey, 1.5);
    alerts = await settle(r, vkey);
    assert.deepEqual(alerts.map((a) => a[0]), ["budget_90_percent", "budget_exceeded"]);
    await c.stop();
});

test("a burst of 50 updates oscillating across 0.5 yields exactly one budget_50_percent", async () => {
    const vkey = freshKey();
    const { c, r } = await spendClient(vkey);
    for (let i = 0; i < 50; i++) await update(vkey, i % 2 === 0 ? 0.51 : 0.49);
    const alerts = await settle(r, vkey);
    assert.deepEqual(alerts.map((a) => a[0]), ["budget_50_percent"], JSON.stringify(alerts.slice(0, 5)));
    assertDerived(alerts[0], { alertType: "budget_50_percent", threshold: 0.5, currentSpend: 51, budget: 100, percentageUsed: 51 });
    await c.stop();
});

test("a producer's BudgetAlert within the cooldown of the same alertType is dropped", async () => {
    const vkey = freshKey();
    const { c, r } = await spendClient(vkey);
    await update(vkey, 0.8);
    let alerts = await settle(r, vkey);
    assert.deepEqual(alerts.map((a) => a[0]), ["budget_75_percent"]);

    const producerAlert = (alertType, message) => ({
        alertType,
        threshold: 0.9,
        currentSpend: 91,
        budget: 100,
        percentageUsed: 91,
        severity: "error",
        message,
        timestamp: "2025-11-25T21:00:00Z",
    });
    await server.publish("spend", `vkey.${vkey}.BudgetAlert`, producerAlert("budget_75_percent", "dropped: derived one sent"));
    await server.publish("spend", `vkey.${vkey}.BudgetAlert`, producerAlert("budget_90_percent", "first 90"));
    await server.publish("spend", `vkey.${vkey}.BudgetAlert`, producerAlert("budget_90_percent", "dropped: second 90"));
    // The derived 90 % alert is now within the cooldown of the producer's one.
    await update(vkey, 0.95);
    // Positive control: another alertType still goes through.
    await server.publish("spend", `vkey.${vkey}.BudgetAlert`, producerAlert("custom_anomaly", "control"));
    await r.until((l) => l.some((e) => e.event === "BudgetAlert" && e.args[1].message === "control"), 5000, "the control alert");
    alerts = await settle(r, vkey);
    assert.deepEqual(
        alerts.map((a) => [a[0], a[0] === "budget_75_percent" ? "derived" : a[1].message]),
        [
            ["budget_75_percent", "derived"],
            ["budget_90_percent", "first 90"],
            ["custom_anomaly", "control"],
        ],
    );
    await c.stop();
});

test("a producer's BudgetAlert starts the cooldown for the derived alert; other keys are unaffected", async () => {
    const vkey = freshKey();
    const other = freshKey();
    const { c, r } = await spendClient(vkey);
    const o = await spendClient(other);
    await server.publish("spend", `vkey.${vkey}.BudgetAlert`, {
        alertType: "budget_50_percent",
        message: "from the producer",
    });
    await r.until((l) => l.some((e) => e.event === "BudgetAlert"), 5000, "the producer's alert");
    await update(vkey, 0.6);
    let alerts = await settle(r, vkey);
    assert.deepEqual(alerts, [["budget_50_percent", { message: "from the producer" }]], "no derived 50 % alert");
    // Positive control on the same key: 0.75 is crossed for the first time.
    await update(vkey, 0.8);
    alerts = await settle(r, vkey);
    assert.deepEqual(alerts.map((a) => a[0]), ["budget_50_percent", "budget_75_percent"]);
    // Another key has its own cooldowns.
    await update(other, 0.6);
    const otherAlerts = await settle(o.r, other);
    assert.deepEqual(otherAlerts.map((a) => a[0]), ["budget_50_percent"]);
    // ... and key vkey's connection saw nothing of it.
    await sleep(100);
    assert.equal(r.count("SpendUpdate"), sent.get(vkey));
    await c.stop();
    await o.c.stop();
});

test("updates without budgetUtilization, or below every threshold, send no alert", async () => {
    const vkey = freshKey();
    const { c, r } = await spendClient(vkey);
    await server.publish("spend", `vkey.${vkey}.SpendUpdate`, { amount: 1, totalSpend: 99 });
    sent.set(vkey, (sent.get(vkey) ?? 0) + 1);
    await update(vkey, 0.1);
    await update(vkey, 0.49);
    let alerts = await settle(r, vkey);
    assert.deepEqual(alerts, []);
    // Positive control.
    await update(vkey, 0.55);
    alerts = await settle(r, vkey);
    assert.deepEqual(alerts.map((a) => a[0]), ["budget_50_percent"]);
    await c.stop();
});
