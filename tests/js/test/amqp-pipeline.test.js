// The RabbitMQ pipeline end to end (contract sections 4 and 7): `hubcast publish` (lapin, publisher confirms)
// -> <p>tasks -> `hubcast router` -> <p>hubcast.edges -> `hubcast edge` -> the official JS clients (JSON and
// MessagePack); durable router queues keep what is published while no router runs; /readyz of both roles.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { record, uid, sleep } from "./harness.js";
import { AmqpWorld, probeBroker, skipUnlessBroker, requireBroker, printStderrOnFailure, eventually } from "./amqp-harness.js";

const broker = await probeBroker();
const SETTLE_MS = 500;

describe("RabbitMQ pipeline: hubcast publish -> router -> edge -> clients", { skip: skipUnlessBroker(broker) }, () => {
    const world = new AmqpWorld();
    let router;
    let edge;

    before(async () => {
        requireBroker(broker);
        await world.open();
        router = await world.start("router");
        edge = await world.start("edge", { node: "e1" });
    });
    after(async () => {
        await world.cleanup();
    });
    printStderrOnFailure(afterEach, world);

    async function tasksClient(vkey, protocol = "json") {
        const token = await edge.mintToken({ vkey });
        return edge.connect({ hub: "tasks", token, protocol });
    }

    async function cli(routingKey, payload, messageId) {
        const res = await world.cliPublish({ hub: "tasks", routingKey, messageId, payload });
        assert.equal(res.code, 0, `hubcast publish failed (${res.code}):\nstdout: ${res.stdout}\nstderr: ${res.stderr}`);
        return JSON.parse(res.stdout.trim());
    }

    test("/readyz is 200 \"ready\" on the router and on the edge; /healthz too", async () => {
        for (const [name, s] of [
            ["router", router],
            ["edge", edge],
        ]) {
            const ready = await s.readyz();
            assert.deepEqual(ready, { status: 200, body: "ready" }, `${name} /readyz`);
            const health = await fetch(`${s.url}/healthz`);
            assert.equal(health.status, 200, `${name} /healthz`);
        }
        // The topology is in place: the router consumes every hub queue.
        for (const hub of ["tasks", "spend", "admin-notifications"]) {
            const q = await world.checkQueue(world.routerQueue(hub));
            assert.equal(q.consumerCount, 1, `consumers of ${world.routerQueue(hub)}`);
        }
    });

    test("TaskProgress published with `hubcast publish` reaches JSON and MessagePack clients with exact arguments", async () => {
        const taskId = uid("abc");
        const json = await tasksClient("7", "json");
        const msgpack = await tasksClient("7", "messagepack");
        const other = await tasksClient("9", "json"); // same task id, other key: must get nothing
        for (const c of [json, msgpack, other]) await c.invoke("SubscribeToTask", taskId);
        const logs = [json, msgpack, other].map((c) => record(c, ["TaskProgress", "TaskStarted"]));

        const id1 = uid("m");
        const answer = await cli("vkey.7.TaskProgress", { taskId, taskType: "render", percentComplete: 42, message: "half way" }, id1);
        assert.deepEqual(answer, { messageId: id1, confirmed: true }, "hubcast publish prints the confirmation");
        const id2 = uid("m");
        await cli("vkey.7.TaskProgress", { taskId, taskType: "render", percentComplete: 43 }, id2); // message absent -> null

        for (const [i, r] of logs.slice(0, 2).entries()) {
            await r.until((l) => l.length >= 2, 10_000, `both TaskProgress on client ${i}`);
        }
        await sleep(SETTLE_MS);
        const expected = [
            { event: "TaskProgress", args: [taskId, 42, "half way"] },
            { event: "TaskProgress", args: [taskId, 43, null] },
        ];
        assert.deepEqual(logs[0].log, expected, "JSON client");
        assert.deepEqual(logs[1].log, expected, "MessagePack client");
        assert.deepEqual(logs[2].log, [], "key 9 subscribed to the same task id gets nothing");
        for (const c of [json, msgpack, other]) await c.stop();
    });

    test("an event published twice with the same message id is delivered once", async () => {
        const taskId = uid("dup");
        const c = await tasksClient("7", "json");
        await c.invoke("SubscribeToTask", taskId);
        const r = record(c, ["TaskProgress"]);
        const id = uid("same");
        await cli("vkey.7.TaskProgress", { taskId, taskType: "render", percentComplete: 1, message: "first" }, id);
        await cli("vkey.7.TaskProgress", { taskId, taskType: "render", percentComplete: 1, message: "first" }, id);
        await cli("vkey.7.TaskProgress", { taskId, taskType: "render", percentComplete: 2, message: "sentinel" }, uid("m"));
        await r.until((l) => l.some((e) => e.args[2] === "sentinel"), 10_000, "the sentinel");
        await sleep(SETTLE_MS);
        assert.deepEqual(
            r.log.map((e) => e.args),
            [
                [taskId, 1, "first"],
                [taskId, 2, "sentinel"],
            ],
        );
        await c.stop();
    });

    test("events published while no router runs wait in the durable queue and are delivered once a router starts", async () => {
        const taskId = uid("offline");
        const json = await tasksClient("7", "json");
        const msgpack = await tasksClient("7", "messagepack");
        for (const c of [json, msgpack]) await c.invoke("SubscribeToTask", taskId);
        const logs = [json, msgpack].map((c) => record(c, ["TaskProgress"]));

        await router.stop();
        const q = world.routerQueue("tasks");
        await eventually(async () => (await world.checkQueue(q)).consumerCount === 0, 5000, `${q} without consumer`);
        assert.deepEqual(await edge.readyz(), { status: 200, body: "ready" }, "the edge stays ready without a router");

        const ids = [];
        for (let i = 0; i < 5; i++) {
            const id = uid(`off${i}`);
            ids.push(id);
            await cli("vkey.7.TaskProgress", { taskId, taskType: "render", percentComplete: i * 10, message: id }, id);
        }
        await sleep(1000);
        assert.deepEqual(logs[0].log, [], "nothing is delivered while no router runs");
        assert.equal((await world.checkQueue(q)).messageCount, 5, `the 5 events wait in ${q}`);

        router = await world.start("router", { name: "router #2" });
        const expected = ids.map((id, i) => ({ event: "TaskProgress", args: [taskId, i * 10, id] }));
        for (const [i, r] of logs.entries()) await r.until((l) => l.length >= 5, 15_000, `5 events on client ${i}`);
        await sleep(SETTLE_MS);
        assert.deepEqual(logs[0].log, expected, "JSON client: each event once, in order");
        assert.deepEqual(logs[1].log, expected, "MessagePack client: each event once, in order");
        assert.equal((await world.checkQueue(q)).messageCount, 0, `${q} is empty`);
        for (const c of [json, msgpack]) await c.stop();
    });
});
