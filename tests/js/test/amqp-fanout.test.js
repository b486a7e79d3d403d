// Fan-out over RabbitMQ with two edges and two routers (contract sections 2 and 4): every member of a group
// gets every event exactly once whichever edge it is on; an edge binds `d.<hub>.t.<key>` only while it has a
// connection of that key, so events for keys it does not serve never reach it; groups stay exact.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { record, uid, sleep } from "./harness.js";
import { AmqpWorld, probeBroker, probeRabbitmqctl, skipUnlessBroker, requireBroker, printStderrOnFailure, eventually } from "./amqp-harness.js";

const broker = await probeBroker();
const ctl = broker.ok ? await probeRabbitmqctl() : broker;
const SETTLE_MS = 700;
const N = 100;

describe("RabbitMQ fan-out: two edges, two routers", { skip: skipUnlessBroker(broker, ctl) }, () => {
    const world = new AmqpWorld();
    let edgeA;
    let edgeB;
    let routers;
    const qA = () => world.edgeQueue("a");
    const qB = () => world.edgeQueue("b");

    before(async () => {
        requireBroker(broker, ctl);
        await world.open();
        routers = await Promise.all([world.start("router", { name: "router 1" }), world.start("router", { name: "router 2" })]);
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

    const progress = (taskId, i, message) => ({ taskId, taskType: "fanout", percentComplete: i % 101, message });

    test("both routers consume the hub queues", async () => {
        const q = await world.checkQueue(world.routerQueue("tasks"));
        assert.equal(q.consumerCount, 2, "two consumers on the tasks queue");
    });

    test(`3 members of task-abc (key 7) on two edges each get all ${N} events exactly once`, async () => {
        const taskId = "abc";
        const members = [
            await client(edgeA, "7", "json"),
            await client(edgeB, "7", "messagepack"),
            await client(edgeB, "7", "json"),
        ];
        for (const c of members) await c.invoke("SubscribeToTask", taskId);
        const logs = members.map((c) => record(c, ["TaskProgress"]));

        const ids = Array.from({ length: N }, (_, i) => `fan-${world.prefix}${i}`);
        await Promise.all(ids.map((id, i) => world.publishNoWait("tasks", "vkey.7.TaskProgress", progress(taskId, i, id), { messageId: id, type: "TaskProgress" })));
        for (const [i, r] of logs.entries()) await r.until((l) => l.length >= N, 20_000, `${N} events on member ${i}`);
        await sleep(SETTLE_MS);
        for (const [i, r] of logs.entries()) {
            const got = r.log.map((e) => e.args[2]);
            assert.equal(got.length, N, `member ${i}: exactly ${N} events (no duplicates)`);
            assert.deepEqual([...got].sort(), [...ids].sort(), `member ${i}: every id once`);
            for (const e of r.log) {
                const index = ids.indexOf(e.args[2]);
                assert.deepEqual(e.args, [taskId, index % 101, ids[index]], `member ${i}: arguments of ${e.args[2]}`);
            }
        }
        for (const c of members) await c.stop();
    });

    test("an edge without a key-9 connection has no d.tasks.t.9 binding and gets no key-9 event; the other edge's key-9 client does", async () => {
        const taskId = uid("nine");
        const sevenA = await client(edgeA, "7");
        const sevenB = await client(edgeB, "7");
        const nineB = await client(edgeB, "9", "messagepack");
        for (const c of [sevenA, sevenB, nineB]) await c.invoke("SubscribeToTask", taskId);
        const logs = [sevenA, sevenB, nineB].map((c) => record(c, ["TaskProgress"]));

        assert.deepEqual(await world.bindingsOf(qA()), ["d.tasks.t.7"], `bindings of ${qA()}`);
        assert.deepEqual(await world.bindingsOf(qB()), ["d.tasks.t.7", "d.tasks.t.9"], `bindings of ${qB()}`);
        assert.equal(await edgeA.metric("hubcast_bindings"), 1, "edge a: hubcast_bindings");
        assert.equal(await edgeB.metric("hubcast_bindings"), 2, "edge b: hubcast_bindings");

        for (let i = 0; i < 10; i++) {
            await world.publish("tasks", "vkey.9.TaskProgress", progress(taskId, i, `k9-${i}`), { messageId: uid("k9") });
        }
        await logs[2].until((l) => l.length >= 10, 10_000, "10 key-9 events on edge b");
        await sleep(SETTLE_MS);
        assert.equal(logs[2].log.length, 10, "the key-9 client gets each event once");
        assert.deepEqual(logs[0].log, [], "key 7 on edge a gets no key-9 event");
        assert.deepEqual(logs[1].log, [], "key 7 on edge b gets no key-9 event");
        assert.deepEqual(await world.bindingsOf(qA()), ["d.tasks.t.7"], "edge a still has no key-9 binding");

        // The last key-9 connection leaves: edge b unbinds.
        await nineB.stop();
        await eventually(
            async () => JSON.stringify(await world.bindingsOf(qB())) === JSON.stringify(["d.tasks.t.7"]),
            5000,
            `${qB()} unbinding d.tasks.t.9 after its last key-9 connection closed`,
        );
        assert.equal(await edgeB.metric("hubcast_bindings"), 1, "edge b: hubcast_bindings after the close");
        for (const c of [sevenA, sevenB]) await c.stop();
        await eventually(async () => (await world.bindingsOf(qA())).length === 0, 5000, `${qA()} without bindings once empty`);
    });

    test("a key-7 client not in task-xyz gets nothing of it, while a member on the other edge does", async () => {
        const abc = uid("abc");
        const xyz = uid("xyz");
        const outsider = await client(edgeA, "7"); // in task-abc only
        const member = await client(edgeB, "7", "messagepack"); // in task-xyz
        const memberA = await client(edgeA, "7"); // in task-xyz, on the outsider's edge
        await outsider.invoke("SubscribeToTask", abc);
        await member.invoke("SubscribeToTask", xyz);
        await memberA.invoke("SubscribeToTask", xyz);
        const logs = [outsider, member, memberA].map((c) => record(c, ["TaskProgress", "TaskCompleted"]));
        await world.publish("tasks", "vkey.7.TaskProgress", progress(xyz, 5, "for xyz"), { messageId: uid("x") });
        await world.publish("tasks", "vkey.7.TaskCompleted", { taskId: xyz, taskType: "fanout", result: { ok: true } }, { messageId: uid("x") });
        await logs[1].until((l) => l.length >= 2, 10_000, "both xyz events on the member");
        await logs[2].until((l) => l.length >= 2, 10_000, "both xyz events on the member of edge a");
        await sleep(SETTLE_MS);
        const expected = [
            { event: "TaskProgress", args: [xyz, 5, "for xyz"] },
            { event: "TaskCompleted", args: [xyz, { ok: true }] },
        ];
        // Two routers: the two events may arrive in either order.
        const byEvent = (l) => [...l].sort((a, b) => a.event.localeCompare(b.event));
        assert.deepEqual(byEvent(logs[1].log), byEvent(expected));
        assert.deepEqual(byEvent(logs[2].log), byEvent(expected));
        assert.deepEqual(logs[0].log, [], "not subscribed to xyz: nothing");
        for (const c of [outsider, member, memberA]) await c.stop();
    });

    test("a backlog goes out in batches: each tenant's members get exactly their events, in order, on both edges", async () => {
        // Keys 7 and 9 use the same task id: only the key separates their groups.
        const taskId = uid("backlog");
        const sevenA = await client(edgeA, "7");
        const sevenB = await client(edgeB, "7", "messagepack");
        const nineB = await client(edgeB, "9");
        for (const c of [sevenA, sevenB, nineB]) await c.invoke("SubscribeToTask", taskId);
        const logs = [sevenA, sevenB, nineB].map((c) => record(c, ["TaskProgress"]));

        await Promise.all(routers.map((r) => r.stop()));
        const q = world.routerQueue("tasks");
        await eventually(async () => (await world.checkQueue(q)).consumerCount === 0, 5000, `${q} without consumers`);
        const EVENTS = 60;
        const sent = { 7: [], 9: [] };
        for (let i = 0; i < EVENTS; i++) {
            const key = i % 2 === 0 ? "7" : "9";
            const id = uid(`b${key}-${i}`);
            sent[key].push({ event: "TaskProgress", args: [taskId, i, id] });
            await world.publishNoWait("tasks", `vkey.${key}.TaskProgress`, progress(taskId, i, id), { messageId: id });
            // Spend events in between: the hubs' consumers share the router's channel and its delivery tags,
            // so acks must cover both hubs' messages whatever order they are taken in.
            if (i % 3 === 0) await world.publishNoWait("spend", `vkey.${key}.SpendUpdate`, { amount: 1, totalSpend: i }, { messageId: uid("s") });
        }
        const spendQ = world.routerQueue("spend");
        await eventually(async () => (await world.checkQueue(q)).messageCount === EVENTS, 5000, `${EVENTS} events waiting in ${q}`);
        await eventually(async () => (await world.checkQueue(spendQ)).messageCount === EVENTS / 3, 5000, `spend events waiting in ${spendQ}`);

        const router = await world.start("router", { name: "router 3" });
        routers = [router];
        await logs[0].until((l) => l.length >= EVENTS / 2, 15_000, "key-7 events on edge a");
        await logs[1].until((l) => l.length >= EVENTS / 2, 15_000, "key-7 events on edge b");
        await logs[2].until((l) => l.length >= EVENTS / 2, 15_000, "key-9 events on edge b");
        await sleep(SETTLE_MS);
        assert.deepEqual(logs[0].log, sent[7], "key 7 on edge a: its own events once each, in order, none of key 9's");
        assert.deepEqual(logs[1].log, sent[7], "key 7 on edge b: the same");
        assert.deepEqual(logs[2].log, sent[9], "key 9 on edge b: its own events once each, in order, none of key 7's");

        const forwards = await router.metric("hubcast_forward_messages_total");
        assert.ok(forwards >= 1 && forwards < EVENTS, `the router sent the backlog of ${EVENTS} events in fewer messages (${forwards})`);
        // Everything is acked, not merely delivered: nothing ready and nothing unacknowledged on either hub.
        await eventually(async () => {
            const queues = await world.queues();
            return queues[q]?.messages === 0 && queues[spendQ]?.messages === 0;
        }, 5000, `${q} and ${spendQ} without ready or unacknowledged messages`);
        for (const c of [sevenA, sevenB, nineB]) await c.stop();
    });
});
