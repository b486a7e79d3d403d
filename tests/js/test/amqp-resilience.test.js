// Resilience of the RabbitMQ pipeline (contract sections 3 and 4): a router SIGKILLed mid-stream and restarted
// loses nothing and duplicates nothing (redeliveries are dropped by message id); losing the broker connection
// makes /readyz 503 until the roles reconnect, and delivery resumes with the clients' WebSockets untouched;
// a revocation closes the key's connections on every edge within a second.
//
// This file runs in its own vhost, so that closing "all connections" closes only this file's.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { record, uid, sleep, withTimeout, HubConnectionState } from "./harness.js";
import {
    AmqpWorld,
    probeBroker,
    probeRabbitmqctl,
    skipUnlessBroker,
    requireBroker,
    printStderrOnFailure,
    eventually,
    rabbitmqctl,
} from "./amqp-harness.js";

const broker = await probeBroker();
const ctl = broker.ok ? await probeRabbitmqctl() : broker;
const SETTLE_MS = 700;

describe("RabbitMQ resilience", { skip: skipUnlessBroker(broker, ctl) }, () => {
    const world = new AmqpWorld({ vhost: true });
    let router;
    let edgeA;
    let edgeB;

    before(async () => {
        requireBroker(broker, ctl);
        await world.open();
        router = await world.start("router");
        [edgeA, edgeB] = await Promise.all([world.start("edge", { node: "a" }), world.start("edge", { node: "b" })]);
    });
    after(async () => {
        await world.cleanup();
    });
    printStderrOnFailure(afterEach, world);

    async function client(edge, vkey, protocol = "json", hub = "tasks") {
        const token = await edge.mintToken({ vkey });
        return edge.connect({ hub, token, protocol });
    }

    test("router SIGKILLed after ~50 of 200 events and restarted: every event reaches each client exactly once", async () => {
        const taskId = uid("kill");
        const cA = await client(edgeA, "7", "json");
        const cB = await client(edgeB, "7", "messagepack");
        for (const c of [cA, cB]) await c.invoke("SubscribeToTask", taskId);
        const logs = [cA, cB].map((c) => record(c, ["TaskProgress"]));

        const ids = Array.from({ length: 200 }, (_, i) => `kill-${i}-${uid("m")}`);
        const publish = (i) =>
            world.publishNoWait("tasks", "vkey.7.TaskProgress", { taskId, taskType: "kill", percentComplete: i % 101, message: ids[i] }, {
                messageId: ids[i],
                type: "TaskProgress",
            });
        const confirms = [];
        for (let i = 0; i < 50; i++) {
            confirms.push(publish(i));
            await sleep(5);
        }
        // A burst the router is still working through when it dies: events forwarded but not yet acked come
        // back to the next router, and the edges must drop them by message id.
        for (let i = 50; i < 150; i++) confirms.push(publish(i));
        await logs[0].until((l) => l.length >= 60, 10_000, "the burst under way");
        await router.kill();
        const killedAt = logs.map((r) => r.log.length);
        await Promise.all(confirms);
        let restarted;
        for (let i = 150; i < 200; i++) {
            confirms.push(publish(i));
            if (i === 170) restarted = world.start("router", { name: "router #2" });
            await sleep(5);
        }
        await withTimeout(Promise.all(confirms), 10_000, "publisher confirms");
        router = await restarted;

        for (const [i, r] of logs.entries()) await r.until((l) => l.length >= 200, 20_000, `200 events on client ${i}`);
        await sleep(SETTLE_MS);
        for (const [i, r] of logs.entries()) {
            const got = r.log.map((e) => e.args[2]);
            const dupes = got.filter((id, k) => got.indexOf(id) !== k);
            assert.deepEqual(dupes, [], `client ${i}: no event twice`);
            assert.equal(got.length, 200, `client ${i}: exactly 200 events`);
            assert.deepEqual([...got].sort(), [...ids].sort(), `client ${i}: every id`);
        }
        assert.ok(killedAt.every((n) => n < 150), `the router died mid-burst (delivered before the kill: ${killedAt})`);
        for (const c of [cA, cB]) await c.stop();
    });

    test("broker closes every connection: /readyz 503 then 200 again; delivery resumes over the same WebSockets", async () => {
        const taskId = uid("reconn");
        const stayA = await client(edgeA, "7", "json");
        const stayB = await client(edgeB, "7", "messagepack");
        for (const c of [stayA, stayB]) await c.invoke("SubscribeToTask", taskId);
        const logs = [stayA, stayB].map((c) => record(c, ["TaskProgress"]));

        // Poll /readyz of all three roles while the broker drops their connections.
        const roles = { router, "edge a": edgeA, "edge b": edgeB };
        const seen = Object.fromEntries(Object.keys(roles).map((k) => [k, []]));
        let polling = true;
        const pollers = Object.entries(roles).map(async ([name, s]) => {
            while (polling) {
                const { status } = await s.readyz();
                const list = seen[name];
                if (list[list.length - 1]?.status !== status) list.push({ status, at: Date.now() });
                await sleep(5);
            }
        });
        await sleep(100);
        const producerClosed = new Promise((resolve) => world.conn.once("close", resolve));
        const closedAt = Date.now();
        await rabbitmqctl(["close_all_connections", "-p", world.vhost, "hubcast integration test"]);
        try {
            await eventually(
                () => Object.values(seen).every((l) => l.some((e) => e.status === 503) && l[l.length - 1].status === 200),
                15_000,
                `every role back to /readyz 200 after a 503: ${JSON.stringify(seen)}`,
            );
        } finally {
            polling = false;
            await Promise.all(pollers);
        }
        for (const [name, l] of Object.entries(seen)) {
            assert.equal(l[0].status, 200, `${name}: ready before the close`);
            const down = l.findIndex((e) => e.status === 503);
            assert.ok(down > 0, `${name}: /readyz went 503 (${JSON.stringify(l)})`);
            assert.ok(l[l.length - 1].at - closedAt < 15_000, `${name}: ready again within 15 s`);
        }
        await withTimeout(producerClosed, 5000, "the test's own producer connection closed too");
        await world.reconnect();

        assert.equal(stayA.state, HubConnectionState.Connected, "client on edge a still connected");
        assert.equal(stayB.state, HubConnectionState.Connected, "client on edge b still connected");
        assert.deepEqual(await world.bindingsOf(world.edgeQueue("a")), ["d.tasks.t.7"], "edge a re-bound key 7");
        assert.deepEqual(await world.bindingsOf(world.edgeQueue("b")), ["d.tasks.t.7"], "edge b re-bound key 7");

        const fresh = await client(edgeB, "7", "json");
        await fresh.invoke("SubscribeToTask", taskId);
        const freshLog = record(fresh, ["TaskProgress"]);
        for (let i = 0; i < 5; i++) {
            await world.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "reconn", percentComplete: i, message: `after-${i}` }, { messageId: uid("after") });
        }
        const expected = Array.from({ length: 5 }, (_, i) => ({ event: "TaskProgress", args: [taskId, i, `after-${i}`] }));
        for (const [i, r] of [...logs, freshLog].entries()) await r.until((l) => l.length >= 5, 10_000, `5 events after recovery on client ${i}`);
        await sleep(SETTLE_MS);
        assert.deepEqual(logs[0].log, expected, "client that stayed on edge a");
        assert.deepEqual(logs[1].log, expected, "client that stayed on edge b");
        assert.deepEqual(freshLog.log, expected, "client connected after recovery");
        for (const c of [stayA, stayB, fresh]) await c.stop();
    });

    // Last: key 7 stays revoked afterwards.
    test("VirtualKeyDeleted for key 7 closes key 7's connections on both edges within 1 s; key 9 unaffected; 403 afterwards, also on a new edge", async () => {
        const sevens = [
            await client(edgeA, "7", "json"),
            await client(edgeB, "7", "messagepack"),
            await client(edgeA, "7", "json", "spend"),
        ];
        const nines = [await client(edgeA, "9", "json"), await client(edgeB, "9", "messagepack")];
        const nineTask = uid("nine");
        for (const c of nines) await c.invoke("SubscribeToTask", nineTask);
        const closedAt = sevens.map((c) => c.closed.then((err) => ({ err, at: Date.now() })));

        const t0 = Date.now();
        await world.publish("admin-notifications", "admin.VirtualKeyDeleted", { virtualKeyId: "7" }, { messageId: uid("revoke") });
        const results = await withTimeout(Promise.all(closedAt), 5000, "every key-7 connection to close");
        for (const [i, { err, at }] of results.entries()) {
            assert.match(String(err && err.message), /Virtual key revoked/, `connection ${i} closed for the revocation`);
            assert.ok(at - t0 <= 1000, `connection ${i} closed ${at - t0} ms after the publish (limit 1000 ms)`);
        }

        // Key 9 is untouched and still served.
        const nineLogs = nines.map((c) => record(c, ["TaskProgress"]));
        await world.publish("tasks", "vkey.9.TaskProgress", { taskId: nineTask, taskType: "nine", percentComplete: 9, message: "still here" }, { messageId: uid("k9") });
        for (const [i, r] of nineLogs.entries()) await r.until((l) => l.length >= 1, 10_000, `key-9 event on client ${i}`);
        for (const [i, c] of nines.entries()) {
            assert.equal(c.state, HubConnectionState.Connected, `key 9 client ${i} stays connected`);
            assert.deepEqual(nineLogs[i].log, [{ event: "TaskProgress", args: [nineTask, 9, "still here"] }]);
        }

        // New connections of key 7 are refused on every edge, including one started after the revocation.
        const token7 = await edgeA.mintToken({ vkey: "7" });
        const edgeC = await world.start("edge", { node: "c" });
        for (const [name, s] of [
            ["edge a", edgeA],
            ["edge b", edgeB],
            ["edge c (started after the revocation)", edgeC],
        ]) {
            const res = await s.negotiate({ hub: "tasks", headers: { Authorization: `Bearer ${token7}` } });
            assert.equal(res.status, 403, `${name}: negotiate of revoked key 7: ${res.status} ${res.text}`);
        }
        const token9 = await edgeA.mintToken({ vkey: "9" });
        assert.equal((await edgeC.negotiate({ hub: "tasks", headers: { Authorization: `Bearer ${token9}` } })).status, 200, "edge c: key 9 is fine");
        for (const c of nines) await c.stop();
    });
});
