// The admin-notifications hub (contract sections 2, 3, 5): master-key access, InitialProviderHealth,
// subscriptions, VirtualKeyActivity, SystemAlert, Error, and key revocation.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
    useServer,
    record,
    waitFor,
    waitClosed,
    invokeError,
    uid,
    sleep,
    withTimeout,
    MASTER_KEY,
    HUB_EXCEPTION,
    HubConnectionState,
} from "./harness.js";

const server = useServer();
const ADMIN = "admin-notifications";
const SETTLE_MS = 400;
const TENANT_HUBS = ["tasks", "video-generation", "image-generation", "notifications", "spend", "webhooks"];

let keyCounter = 0;
function freshKey() {
    keyCounter += 1;
    return String(200000 + (process.pid % 1000) * 100 + keyCounter);
}

/** An admin connection whose InitialProviderHealth is captured (registered before start). */
async function admin({ token = MASTER_KEY, protocol = "json" } = {}) {
    const c = await server.connect({ hub: ADMIN, token, protocol, start: false });
    const initial = new Promise((resolve) => c.on("InitialProviderHealth", (...args) => resolve(args)));
    await withTimeout(c.start(), 10_000, "admin connect");
    c.initial = withTimeout(initial, 5000, "InitialProviderHealth");
    return c;
}

async function tenant(hub, vkey, protocol = "json") {
    const token = await server.mintToken({ vkey });
    return server.connect({ hub, token, protocol });
}

const byProvider = (a, b) => (a.provider < b.provider ? -1 : a.provider > b.provider ? 1 : 0);

// Must run first: nothing has been reported yet on this fresh server.
test("InitialProviderHealth is [] before any ProviderHealthStatus; RefreshProviderHealth too", async () => {
    const c = await admin();
    assert.deepEqual(await c.initial, [[]]);
    assert.deepEqual(await c.invoke("RefreshProviderHealth"), []);
    await c.stop();
});

test("who may connect: master key (X-API-Key, Bearer, access_token, api_key) and admin JWT; vkey token 403; none 401", async () => {
    const vkeyToken = await server.mintToken({ vkey: "7" });
    const adminToken = await server.mintToken({ admin: true });
    const ok = async (what, opts) => {
        const res = await server.negotiate({ hub: ADMIN, ...opts });
        assert.equal(res.status, 200, `${what}: ${res.status} ${res.text}`);
        assert.equal(typeof res.body.connectionToken, "string", what);
    };
    await ok("X-API-Key", { headers: { "X-API-Key": MASTER_KEY } });
    await ok("Bearer master key", { headers: { Authorization: `Bearer ${MASTER_KEY}` } });
    await ok("access_token master key", { query: `access_token=${encodeURIComponent(MASTER_KEY)}` });
    await ok("api_key master key", { query: `api_key=${encodeURIComponent(MASTER_KEY)}` });
    await ok("admin JWT", { headers: { Authorization: `Bearer ${adminToken}` } });

    assert.equal((await server.negotiate({ hub: ADMIN, headers: { Authorization: `Bearer ${vkeyToken}` } })).status, 403);
    assert.equal((await server.negotiate({ hub: ADMIN, query: `access_token=${vkeyToken}` })).status, 403);
    assert.equal((await server.wsStatus({ hub: ADMIN, query: `access_token=${vkeyToken}` })).status, 403);
    assert.equal((await server.negotiate({ hub: ADMIN })).status, 401);
    assert.equal((await server.negotiate({ hub: ADMIN, headers: { "X-API-Key": "wrong-master-key" } })).status, 401);
    assert.equal((await server.wsStatus({ hub: ADMIN })).status, 401);
    // The official client connects with either credential.
    for (const [token, protocol] of [
        [MASTER_KEY, "json"],
        [adminToken, "messagepack"],
    ]) {
        const c = await admin({ token, protocol });
        assert.equal(c.state, HubConnectionState.Connected);
        assert.ok(Array.isArray((await c.initial)[0]));
        await c.stop();
    }
});

for (const protocol of ["json", "messagepack"]) {
    test(`InitialProviderHealth and RefreshProviderHealth: the latest status per provider (${protocol})`, async () => {
        const [p1, p2, p3] = [uid("p1"), uid("p2"), uid("p3")];
        const statuses = [
            { provider: p1, status: "healthy", message: "ok", checkedAt: "2025-11-25T21:00:00Z" },
            { provider: p2, status: "unhealthy", message: "HTTP 503", checkedAt: "2025-11-25T21:00:01Z" },
            { provider: p1, status: "degraded", message: "slow", checkedAt: "2025-11-25T21:00:02Z" },
            { provider: p3, status: "healthy", checkedAt: "2025-11-25T21:00:03Z" },
        ];
        for (const s of statuses) await server.publish(ADMIN, "admin.ProviderHealthStatus", s);
        const expected = [
            { provider: p1, status: "degraded", message: "slow", checkedAt: "2025-11-25T21:00:02Z" },
            { provider: p2, status: "unhealthy", message: "HTTP 503", checkedAt: "2025-11-25T21:00:01Z" },
            { provider: p3, status: "healthy", message: null, checkedAt: "2025-11-25T21:00:03Z" },
        ].sort(byProvider);
        const mine = (list) => list.filter((e) => [p1, p2, p3].includes(e.provider)).sort(byProvider);

        const c = await admin({ protocol });
        const [initial] = await c.initial;
        assert.ok(Array.isArray(initial));
        assert.deepEqual(mine(initial), expected);
        const providers = initial.map((e) => e.provider);
        assert.equal(new Set(providers).size, providers.length, "one entry per provider");
        for (const e of initial) assert.deepEqual(Object.keys(e).sort(), ["checkedAt", "message", "provider", "status"]);

        const refreshed = await c.invoke("RefreshProviderHealth");
        assert.deepEqual([...refreshed].sort(byProvider), [...initial].sort(byProvider), "the same list as InitialProviderHealth");

        // A new status replaces the old one.
        const newer = { provider: p2, status: "healthy", message: "recovered", checkedAt: "2025-11-25T21:10:00Z" };
        const got = waitFor(c, "ProviderHealthStatus");
        await server.publish(ADMIN, "admin.ProviderHealthStatus", newer);
        assert.deepEqual(await got, [p2, "healthy", "recovered", "2025-11-25T21:10:00Z"]);
        const after = mine(await c.invoke("RefreshProviderHealth"));
        assert.deepEqual(after, expected.map((e) => (e.provider === p2 ? newer : e)).sort(byProvider));
        await c.stop();
    });
}

test("SubscribeToProvider / UnsubscribeFromProvider: ProviderHealthStatus still exactly once", async () => {
    const c = await admin();
    const provider = uid("prov");
    const r = record(c, ["ProviderHealthStatus"]);
    await c.invoke("SubscribeToProvider", provider);
    await server.publish(ADMIN, "admin.ProviderHealthStatus", { provider, status: "degraded", checkedAt: "2025-11-25T21:00:00Z" });
    await c.invoke("UnsubscribeFromProvider", provider);
    await server.publish(ADMIN, "admin.ProviderHealthStatus", { provider, status: "healthy", checkedAt: "2025-11-25T21:00:01Z" });
    await r.until((l) => l.length >= 2);
    await sleep(SETTLE_MS);
    assert.deepEqual(r.log.map((e) => e.args), [
        [provider, "degraded", null, "2025-11-25T21:00:00Z"],
        [provider, "healthy", null, "2025-11-25T21:00:01Z"],
    ]);
    await c.stop();
});

test("a refused subscription: HubException and an Error event with its text", async () => {
    const c = await admin();
    const errors = record(c, ["Error"]);
    // Positive control: accepted subscriptions send no Error.
    await c.invoke("SubscribeToVirtualKey", 42);
    await c.invoke("SubscribeToProvider", "openai");
    assert.equal(
        (await invokeError(c, "SubscribeToVirtualKey", "bad/id")).message,
        HUB_EXCEPTION("SubscribeToVirtualKey", "Invalid virtual key ID"),
    );
    await errors.until((l) => l.length >= 1, 3000, "the Error event");
    assert.equal(
        (await invokeError(c, "SubscribeToProvider", "bad name")).message,
        HUB_EXCEPTION("SubscribeToProvider", "Invalid provider name"),
    );
    await errors.until((l) => l.length >= 2, 3000, "the second Error event");
    await sleep(SETTLE_MS);
    assert.deepEqual(errors.log.map((e) => e.args), [["Invalid virtual key ID"], ["Invalid provider name"]]);
    await c.stop();
});

test("VirtualKeyActivity mirrors tasks and spend events of a subscribed key (number and string ids), once per event", async () => {
    const k = freshKey();
    const other = freshKey();
    const byNumber = await admin();
    const byString = await admin({ protocol: "messagepack" });
    await byNumber.invoke("SubscribeToVirtualKey", Number(k));
    await byString.invoke("SubscribeToVirtualKey", k);
    const rn = record(byNumber, ["VirtualKeyActivity"]);
    const rs = record(byString, ["VirtualKeyActivity"]);

    const taskId = uid("act");
    const t1 = await tenant("tasks", k);
    const t2 = await tenant("tasks", k, "messagepack");
    await t1.invoke("SubscribeToTask", taskId);
    await t2.invoke("SubscribeToTask", taskId);
    const spend = await tenant("spend", k);
    const otherTasks = await tenant("tasks", other);
    await otherTasks.invoke("SubscribeToTask", taskId);
    const otherSpend = await tenant("spend", other);
    const otherGot = record(otherTasks, ["TaskProgress"]);

    const spendBody = { amount: 0.25, totalSpend: 3.5, provider: "openai", model: "gpt-4o" };
    // Another key's events first: they must not be mirrored to these admins (but do reach that key).
    await server.publish("tasks", `vkey.${other}.TaskProgress`, { taskId, taskType: "x", percentComplete: 7, message: "other" });
    await server.publish("spend", `vkey.${other}.SpendUpdate`, { amount: 9, totalSpend: 9 });
    await otherGot.until((l) => l.length >= 1, 5000, "the other key's own event");
    await server.publish("tasks", `vkey.${k}.TaskProgress`, { taskId, taskType: "x", percentComplete: 50, message: "half" });
    await server.publish("spend", `vkey.${k}.SpendUpdate`, spendBody);
    await rn.until((l) => l.length >= 2);
    await rs.until((l) => l.length >= 2);
    await sleep(SETTLE_MS);
    const expected = [
        [k, "tasks", "TaskProgress", [taskId, 50, "half"]],
        [k, "spend", "SpendUpdate", [spendBody]],
    ];
    assert.deepEqual(rn.log.map((e) => e.args), expected, "subscribed with a number");
    assert.deepEqual(rs.log.map((e) => e.args), expected, "subscribed with a string");

    // Unsubscribe (with the other id form) stops the mirror for that admin only.
    await byNumber.invoke("UnsubscribeFromVirtualKey", k);
    await server.publish("tasks", `vkey.${k}.TaskCompleted`, { taskId, taskType: "x" });
    await rs.until((l) => l.length >= 3);
    await sleep(SETTLE_MS);
    assert.deepEqual(rs.log[2].args, [k, "tasks", "TaskCompleted", [taskId, null]]);
    assert.equal(rn.log.length, 2, "no mirror after UnsubscribeFromVirtualKey");
    for (const c of [byNumber, byString, t1, t2, spend, otherTasks, otherSpend]) await c.stop();
});

test("SystemAlert reaches every admin connection", async () => {
    const a = await admin();
    const b = await admin({ token: await server.mintToken({ admin: true }), protocol: "messagepack" });
    const ra = record(a, ["SystemAlert"]);
    const rb = record(b, ["SystemAlert"]);
    const alert = { severity: "critical", title: "Disk full", message: uid("alert"), node: "db-1" };
    await server.publish(ADMIN, "admin.SystemAlert", alert);
    await ra.until((l) => l.length >= 1);
    await rb.until((l) => l.length >= 1);
    await sleep(SETTLE_MS);
    assert.deepEqual(ra.log.map((e) => e.args), [[alert]]);
    assert.deepEqual(rb.log.map((e) => e.args), [[alert]]);
    await a.stop();
    await b.stop();
});

/** Asserts that key `k` is refused with 403 on negotiate and on a skipNegotiation WebSocket of every tenant hub. */
async function assertRefused(k, token) {
    for (const hub of TENANT_HUBS) {
        const res = await server.negotiate({ hub, headers: { Authorization: `Bearer ${token}` } });
        assert.equal(res.status, 403, `negotiate ${hub} for revoked key ${k}: ${res.status} ${res.text}`);
    }
    assert.equal((await server.wsStatus({ hub: "tasks", query: `access_token=${token}` })).status, 403);
}

/** Polls until negotiate for `token` answers 200 (at most 1.5 s). */
async function assertAcceptedAgain(token) {
    const deadline = Date.now() + 1500;
    let res;
    do {
        res = await server.negotiate({ hub: "tasks", headers: { Authorization: `Bearer ${token}` } });
        if (res.status === 200) break;
        await sleep(100);
    } while (Date.now() < deadline);
    assert.equal(res.status, 200, `negotiate after the revocation was lifted: ${res.status} ${res.text}`);
    const c = await server.connect({ hub: "tasks", token });
    assert.equal(c.state, HubConnectionState.Connected);
    await c.stop();
}

for (const [how, event, body] of [
    ["VirtualKeyDeleted", "VirtualKeyDeleted", (id) => ({ virtualKeyId: id })],
    ["VirtualKeyUpdated isEnabled:false", "VirtualKeyUpdated", (id) => ({ virtualKeyId: id, isEnabled: false, keyName: "k" })],
]) {
    test(`revocation by ${how}: every connection of the key closed within 1 s, 403 after, lifted by isEnabled:true`, async () => {
        const k = freshKey();
        const other = freshKey();
        const token = await server.mintToken({ vkey: k });
        const conns = [];
        for (const [i, hub] of TENANT_HUBS.entries()) {
            conns.push(await server.connect({ hub, token, protocol: i % 2 ? "messagepack" : "json" }));
        }
        const raw = await server.rawConnect({ hub: "tasks", query: `access_token=${token}` });
        assert.deepEqual(await raw.handshake("json"), {});
        const survivor = await tenant("tasks", other);
        const survivorTask = uid("survivor");
        await survivor.invoke("SubscribeToTask", survivorTask);
        const watcher = await admin();
        const adminGot = waitFor(watcher, event);

        const closedAt = conns.map((c) => c.closed.then((err) => ({ err, at: Date.now() })));
        const rawClosed = raw.closed.then(() => Date.now());
        const t0 = Date.now();
        await server.publish(ADMIN, `admin.${event}`, body(Number(k)));
        const results = await withTimeout(Promise.all(closedAt), 3000, "every connection of the revoked key to close");
        for (const [i, { err, at }] of results.entries()) {
            assert.ok(at - t0 <= 1000, `${TENANT_HUBS[i]} closed after ${at - t0} ms`);
            assert.ok(err, `${TENANT_HUBS[i]}: closed with an error`);
            assert.match(String(err.message), /Virtual key revoked/, TENANT_HUBS[i]);
        }
        // The raw client saw the Close message itself.
        const messages = await raw.drainUntilClose(3000);
        assert.ok((await rawClosed) - t0 <= 1000, "raw socket closed within 1 s");
        const closes = messages.filter((m) => m.msg && m.msg.type === 7);
        // Exactly the contract's Close, with the explicit allowReconnect:false.
        assert.deepEqual(
            closes.map((m) => m.msg),
            [{ type: 7, error: "Virtual key revoked", allowReconnect: false }],
        );
        // The admin hub got the event itself.
        const adminArgs = await adminGot;
        assert.deepEqual(adminArgs, event === "VirtualKeyDeleted" ? [Number(k)] : [body(Number(k))]);

        await assertRefused(k, token);
        const fresh = await server.mintToken({ vkey: k });
        assert.equal((await server.negotiate({ hub: "spend", headers: { Authorization: `Bearer ${fresh}` } })).status, 403, "a new token of the key too");

        // Another key is unaffected.
        assert.equal(survivor.state, HubConnectionState.Connected);
        const got = waitFor(survivor, "TaskProgress");
        await server.publish("tasks", `vkey.${other}.TaskProgress`, { taskId: survivorTask, taskType: "x", percentComplete: 3 });
        assert.deepEqual(await got, [survivorTask, 3, null]);
        await assertAcceptedAgain(await server.mintToken({ vkey: other }));

        // Lifted.
        await server.publish(ADMIN, "admin.VirtualKeyUpdated", { virtualKeyId: Number(k), isEnabled: true });
        await assertAcceptedAgain(token);
        await survivor.stop();
        await watcher.stop();
    });
}

test("VirtualKeyUpdated without isEnabled:false does not revoke; a string virtualKeyId revokes too", async () => {
    const k = freshKey();
    const c = await tenant("tasks", k);
    await server.publish(ADMIN, "admin.VirtualKeyUpdated", { virtualKeyId: Number(k), keyName: "renamed" });
    await server.publish(ADMIN, "admin.VirtualKeyUpdated", { virtualKeyId: Number(k), isEnabled: true });
    await sleep(1200);
    assert.equal(c.state, HubConnectionState.Connected, "not revoked");
    const taskId = uid("still");
    await c.invoke("SubscribeToTask", taskId);
    const got = waitFor(c, "TaskProgress");
    await server.publish("tasks", `vkey.${k}.TaskProgress`, { taskId, taskType: "x", percentComplete: 9 });
    assert.deepEqual(await got, [taskId, 9, null]);
    // Positive control in the same test: the key id as a string.
    const closed = waitClosed(c, 2000);
    await server.publish(ADMIN, "admin.VirtualKeyDeleted", { virtualKeyId: k });
    const err = await closed;
    assert.match(String(err && err.message), /Virtual key revoked/);
});

test("VirtualKeyActivity also mirrors derived BudgetAlerts and vkey notifications, one per event", async () => {
    const k = freshKey();
    const a = await admin();
    await a.invoke("SubscribeToVirtualKey", k);
    const r = record(a, ["VirtualKeyActivity"]);
    const spend = await tenant("spend", k);
    const alerts = record(spend, ["BudgetAlert"]);
    const notes = await tenant("notifications", k);
    const update = { amount: 1, totalSpend: 80, budget: 100, budgetUtilization: 0.8 };
    await server.publish("spend", `vkey.${k}.SpendUpdate`, update);
    await server.publish("notifications", `vkey.${k}.ServiceRestored`, { service: "mirror" });
    await alerts.until((l) => l.length >= 1, 5000, "the derived alert on the tenant hub");
    await r.until((l) => l.length >= 3, 5000, "three mirrors");
    await sleep(SETTLE_MS);
    const byEvent = Object.fromEntries(r.log.map((e) => [e.args[2], e.args]));
    assert.equal(r.log.length, 3, JSON.stringify(r.log.map((e) => e.args[2])));
    assert.deepEqual(byEvent.SpendUpdate, [k, "spend", "SpendUpdate", [update]]);
    assert.deepEqual(byEvent.BudgetAlert, [k, "spend", "BudgetAlert", alerts.log[0].args], "the same arguments the tenant got");
    assert.deepEqual(byEvent.ServiceRestored, [k, "notifications", "ServiceRestored", ["mirror"]]);
    for (const c of [a, spend, notes]) await c.stop();
});
