// The alert cooldown expires (contract section 3): a server with a 3 s cooldown.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, record, sleep } from "./harness.js";

const COOLDOWN_MS = 3000;
const server = useServer({ HUBCAST_SPEND__ALERT_COOLDOWN: "3s" });
const SETTLE_MS = 400;

let keyCounter = 0;
function freshKey() {
    keyCounter += 1;
    return String(400000 + (process.pid % 1000) * 100 + keyCounter);
}

async function spendClient(vkey) {
    const token = await server.mintToken({ vkey });
    const c = await server.connect({ hub: "spend", token });
    return { c, r: record(c, ["SpendUpdate", "BudgetAlert"]) };
}

async function update(vkey, utilization) {
    await server.publish("spend", `vkey.${vkey}.SpendUpdate`, {
        amount: 0.5,
        totalSpend: Math.round(utilization * 10000) / 100,
        budget: 100,
        budgetUtilization: utilization,
    });
}

async function settle(r, updates) {
    await r.until((l) => l.filter((e) => e.event === "SpendUpdate").length >= updates, 5000, `${updates} SpendUpdates`);
    await sleep(SETTLE_MS);
    return r.of("BudgetAlert").map((a) => a[0]);
}

test("derived alerts: suppressed within the cooldown, sent again after it (re-armed below the lowest threshold)", async () => {
    const vkey = freshKey();
    const { c, r } = await spendClient(vkey);
    await update(vkey, 0.6);
    const first = Date.now();
    assert.deepEqual(await settle(r, 1), ["budget_50_percent"]);
    await update(vkey, 0.3); // re-arms every threshold
    await update(vkey, 0.6); // crosses 0.5 again, within the cooldown
    assert.deepEqual(await settle(r, 3), ["budget_50_percent"], "suppressed within the cooldown");
    await sleep(Math.max(0, first + COOLDOWN_MS + 700 - Date.now()));
    await update(vkey, 0.3);
    await update(vkey, 0.6);
    assert.deepEqual(await settle(r, 5), ["budget_50_percent", "budget_50_percent"], "alerts again after the cooldown");
    await c.stop();
});

test("producer alerts: a repeat within the cooldown is dropped, after it delivered", async () => {
    const vkey = freshKey();
    const { c, r } = await spendClient(vkey);
    const publish = (message) =>
        server.publish("spend", `vkey.${vkey}.BudgetAlert`, { alertType: "budget_90_percent", message });
    await publish("one");
    const first = Date.now();
    await publish("two (dropped)");
    await update(vkey, 0.1); // sentinel
    assert.deepEqual(await settle(r, 1), ["budget_90_percent"]);
    assert.equal(r.of("BudgetAlert")[0][1].message, "one");
    await sleep(Math.max(0, first + COOLDOWN_MS + 700 - Date.now()));
    await publish("three");
    await update(vkey, 0.1);
    assert.deepEqual(await settle(r, 2), ["budget_90_percent", "budget_90_percent"]);
    assert.deepEqual(r.of("BudgetAlert").map((a) => a[1].message), ["one", "three"]);
    await c.stop();
});
