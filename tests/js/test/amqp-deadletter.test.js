// Dead-lettering over RabbitMQ (contract section 4): what cannot be delivered goes to the fanout exchange
// <p>dead-letter (queue <p>dead-letter) with `x-hubcast-error` saying why and the original routing key; the
// router keeps going, the valid message behind them is delivered, nothing stays unacked.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { record, uid, sleep } from "./harness.js";
import { AmqpWorld, probeBroker, probeRabbitmqctl, skipUnlessBroker, requireBroker, printStderrOnFailure, eventually } from "./amqp-harness.js";

const broker = await probeBroker();
const ctl = broker.ok ? await probeRabbitmqctl() : broker;
const SETTLE_MS = 700;

const headerText = (v) => (Buffer.isBuffer(v) ? v.toString("utf8") : v === undefined ? undefined : String(v));

describe("RabbitMQ dead letters", { skip: skipUnlessBroker(broker, ctl) }, () => {
    const world = new AmqpWorld();
    let edge;

    before(async () => {
        requireBroker(broker, ctl);
        await world.open();
        await world.start("router");
        edge = await world.start("edge", { node: "e1" });
    });
    after(async () => {
        await world.cleanup();
    });
    printStderrOnFailure(afterEach, world);

    test("invalid messages are dead-lettered with the reason; the valid one behind them is delivered; nothing left unacked", async () => {
        const taskId = uid("dl");
        const token = await edge.mintToken({ vkey: "7" });
        const c = await edge.connect({ hub: "tasks", token });
        await c.invoke("SubscribeToTask", taskId);
        const r = record(c, ["TaskProgress", "TaskCompleted", "TaskStarted"]);
        const good = (extra = {}) => ({ taskId, taskType: "dl", percentComplete: 10, message: "ok", ...extra });

        const invalid = [
            { what: "invalid JSON", rk: "vkey.7.TaskProgress", body: Buffer.from('{"taskId": "' + taskId + '", not json'), reason: ["invalid JSON"] },
            { what: "unknown event", rk: "vkey.7.TaskExploded", body: good(), reason: ["no event", "TaskExploded"] },
            { what: "schema violation", rk: "vkey.7.TaskProgress", body: good({ percentComplete: 150 }), reason: ["percentComplete", "150"] },
            { what: "audience the hub does not take", rk: "all.TaskProgress", body: good(), reason: ["audience", "all"] },
            { what: "type property mismatching the event", rk: "vkey.7.TaskProgress", body: good(), type: "TaskCompleted", reason: ["type", "TaskCompleted"] },
            {
                what: "body over 256 KiB",
                rk: "vkey.7.TaskProgress",
                body: good({ message: "x".repeat(300 * 1024) }),
                reason: ["over the limit"],
            },
        ];
        for (const m of invalid) {
            m.id = uid("bad");
            m.bytes = Buffer.isBuffer(m.body) ? m.body : Buffer.from(JSON.stringify(m.body));
            await world.publish("tasks", m.rk, m.bytes, { messageId: m.id, type: m.type });
        }
        const validId = uid("good");
        await world.publish("tasks", "vkey.7.TaskProgress", good({ percentComplete: 99, message: "valid" }), {
            messageId: validId,
            type: "TaskProgress",
        });

        await r.until((l) => l.length >= 1, 10_000, "the valid event");
        await sleep(SETTLE_MS);
        assert.deepEqual(r.log, [{ event: "TaskProgress", args: [taskId, 99, "valid"] }], "only the valid event reaches the client");

        const dead = await world.take(world.deadLetter, invalid.length, 10_000);
        await sleep(300);
        dead.push(...(await world.drain(world.deadLetter)));
        const byId = new Map(dead.map((m) => [m.properties.messageId, m]));
        assert.equal(dead.length, invalid.length, `exactly ${invalid.length} dead letters; ids ${JSON.stringify([...byId.keys()])}`);
        for (const m of invalid) {
            const d = byId.get(m.id);
            assert.ok(d, `${m.what}: dead-lettered (message id ${m.id})`);
            const headers = d.properties.headers ?? {};
            const error = headerText(headers["x-hubcast-error"]);
            assert.equal(typeof error, "string", `${m.what}: x-hubcast-error header present (${JSON.stringify(Object.keys(headers))})`);
            for (const part of m.reason) {
                assert.ok(error.includes(part), `${m.what}: x-hubcast-error ${JSON.stringify(error)} names ${JSON.stringify(part)}`);
            }
            assert.equal(headerText(headers["x-hubcast-original-routing-key"]), m.rk, `${m.what}: x-hubcast-original-routing-key`);
            assert.ok(d.content.equals(m.bytes), `${m.what}: the body is kept byte for byte`);
            assert.equal(d.fields.exchange, world.deadLetter, `${m.what}: came through the dead-letter exchange`);
        }
        assert.ok(!byId.has(validId), "the valid message is not dead-lettered");

        // Nothing is left in the router queue, ready or unacked.
        const q = world.routerQueue("tasks");
        await eventually(async () => {
            const row = (await world.queues())[q];
            return row && row.messages === 0 && row.messages_unacknowledged === 0 ? row : null;
        }, 5000, `${q}: messages 0 and messages_unacknowledged 0 (${JSON.stringify((await world.queues())[q])})`);
        await c.stop();
    });

    test("the router keeps routing after dead letters: 20 alternating invalid/valid messages", async () => {
        const taskId = uid("alt");
        const token = await edge.mintToken({ vkey: "7" });
        const c = await edge.connect({ hub: "tasks", token, protocol: "messagepack" });
        await c.invoke("SubscribeToTask", taskId);
        const r = record(c, ["TaskProgress"]);
        for (let i = 0; i < 10; i++) {
            await world.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "alt", percentComplete: 101 + i }, { messageId: uid("bad") });
            await world.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "alt", percentComplete: i, message: `v${i}` }, { messageId: uid("ok") });
        }
        await r.until((l) => l.length >= 10, 10_000, "10 valid events");
        await sleep(SETTLE_MS);
        assert.deepEqual(
            r.log.map((e) => e.args),
            Array.from({ length: 10 }, (_, i) => [taskId, i, `v${i}`]),
        );
        const dead = await world.take(world.deadLetter, 10, 10_000);
        await sleep(300);
        dead.push(...(await world.drain(world.deadLetter)));
        assert.equal(dead.length, 10, "10 dead letters");
        for (const d of dead) assert.match(headerText(d.properties.headers["x-hubcast-error"]), /percentComplete/);
        await c.stop();
    });
});
