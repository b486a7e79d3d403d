// Prometheus metrics (/metrics, OpenMetrics text, names hubcast_*): every counter and gauge moves by exactly
// what the traffic of a test did. Scrape, act, scrape, compare whole families, so that a count under the
// wrong label (or an extra one) fails as surely as a missing one.
import { test, describe, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
    useServer,
    record,
    uid,
    sleep,
    invokeError,
    withTimeout,
    MASTER_KEY,
    RS,
    HUB_EXCEPTION,
    NO_SUCH_METHOD,
} from "./harness.js";
import {
    AmqpWorld,
    probeBroker,
    probeRabbitmqctl,
    rabbitmqctl,
    skipUnlessBroker,
    requireBroker,
    printStderrOnFailure,
    eventually,
} from "./amqp-harness.js";
import { scrape, familyDelta, L } from "./obs-helpers.js";

const server = useServer({ HUBCAST_LIMITS__WRITE_TIMEOUT: "1s" });

const ADMIN = "admin-notifications";
const C = (hub, protocol) => L({ hub, protocol });
const R = (hub, reason) => L({ hub, reason });
const M = (hub, method) => L({ hub, method });
const E = (hub, event) => L({ hub, event });
const H = (hub) => L({ hub });

/** Scrapes until `predicate(scrape)` holds (or `ms` passed) and returns the last scrape: assert on it after. */
async function settle(target, predicate, ms = 5000) {
    const deadline = Date.now() + ms;
    for (;;) {
        const s = await scrape(target);
        if (predicate(s) || Date.now() > deadline) return s;
        await sleep(50);
    }
}

const histogram = "hubcast_publish_to_delivery_seconds";

/** The per-`le` bucket deltas of the latency histogram, {le: delta}, and checks they are cumulative. */
function bucketDeltas(before, after) {
    const out = {};
    const les = after.matching(`${histogram}_bucket`).map((s) => s.labels.le);
    for (const le of les) out[le] = after.value(`${histogram}_bucket`, { le }) - before.value(`${histogram}_bucket`, { le });
    const sorted = les.map((le) => [le === "+Inf" ? Infinity : Number(le), out[le]]).sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < sorted.length; i++) {
        assert.ok(sorted[i][1] >= sorted[i - 1][1], `bucket deltas are cumulative: ${JSON.stringify(out)}`);
    }
    return out;
}

let keyCounter = 0;
const freshKey = () => String(810000 + (process.pid % 1000) * 10 + ++keyCounter);

test("connects, invocations, events and closes move every family by exactly what happened", async () => {
    const k = "7";
    const token = await server.mintToken({ vkey: k });
    const s0 = await scrape(server);

    // --- connect: JSON and MessagePack tasks clients of key 7, one admin (master key)
    const json = await server.connect({ hub: "tasks", token, protocol: "json" });
    const mp = await server.connect({ hub: "tasks", token, protocol: "messagepack" });
    const adm = await server.connect({ hub: ADMIN, token: MASTER_KEY, protocol: "json" });
    const s1 = await settle(server, (s) => s.sum("hubcast_connects_total") - s0.sum("hubcast_connects_total") >= 3);
    const connected = { [C("tasks", "json")]: 1, [C("tasks", "messagepack")]: 1, [C(ADMIN, "json")]: 1 };
    assert.deepEqual(familyDelta(s0, s1, "hubcast_connects_total"), connected, "connects by hub and protocol");
    assert.deepEqual(familyDelta(s0, s1, "hubcast_connections"), connected, "connections gauge by hub and protocol");
    assert.deepEqual(familyDelta(s0, s1, "hubcast_disconnects_total"), {}, "no disconnects yet");
    // tasks/7/vkey-7 (shared by both tenant clients) and admin.
    assert.equal(s1.value("hubcast_groups") - s0.value("hubcast_groups"), 2, "groups: vkey-7 of the tasks hub, admin");
    assert.equal(s1.get("hubcast_bindings"), 0, "the embedded bus holds no RabbitMQ bindings");

    // --- invocations: good ones, a case-insensitive name, an unknown method, an invalid id, a missing argument
    const taskId = uid("m");
    await json.invoke("SubscribeToTask", taskId);
    await mp.invoke("SubscribeToTask", taskId);
    await json.invoke("subscribetotask", taskId); // same method, canonical label
    assert.equal((await invokeError(json, "NoSuchMethod", taskId)).message, NO_SUCH_METHOD("NoSuchMethod"));
    assert.equal((await invokeError(json, "SubscribeToTask", "bad id!")).message, HUB_EXCEPTION("SubscribeToTask", "Invalid task ID"));
    await invokeError(mp, "SubscribeToTask"); // no argument: a binding failure
    await adm.invoke("SubscribeToVirtualKey", Number(k));
    const s2 = await scrape(server);
    assert.deepEqual(
        familyDelta(s1, s2, "hubcast_invocations_total"),
        { [M("tasks", "SubscribeToTask")]: 5, [M("tasks", "unknown")]: 1, [M(ADMIN, "SubscribeToVirtualKey")]: 1 },
        "invocations by hub and method (unknown names as method=\"unknown\")",
    );
    assert.deepEqual(
        familyDelta(s1, s2, "hubcast_invocation_refusals_total"),
        { [R("tasks", "method_not_found")]: 1, [R("tasks", "refused")]: 1, [R("tasks", "binding")]: 1 },
        "refusals by reason",
    );
    assert.equal(s2.value("hubcast_groups") - s0.value("hubcast_groups"), 4, "groups: + task-<id> of key 7, admin-vkey-7");

    // --- events: 3 TaskProgress for key 7; both tenant clients and the admin (mirror) receive each
    const logs = [record(json, ["TaskProgress"]), record(mp, ["TaskProgress"]), record(adm, ["VirtualKeyActivity"])];
    for (let i = 1; i <= 3; i++) {
        await server.publish("tasks", `vkey.${k}.TaskProgress`, { taskId, taskType: "metrics", percentComplete: i, message: `e${i}` });
    }
    for (const [i, r] of logs.entries()) await r.until((l) => l.length >= 3, 5000, `3 events on client ${i}`);
    const s3 = await settle(server, (s) => s.value(`${histogram}_count`) - s2.value(`${histogram}_count`) >= 6, 2000);
    await sleep(200);
    assert.deepEqual(familyDelta(s2, s3, "hubcast_events_consumed_total"), { [E("tasks", "TaskProgress")]: 3 }, "events consumed");
    const forwarded = familyDelta(s2, s3, "hubcast_events_forwarded_total");
    assert.equal(forwarded[E("tasks", "TaskProgress")], 3, `tasks deliveries forwarded: ${JSON.stringify(forwarded)}`);
    const mirrors = Object.entries(forwarded).filter(([key]) => JSON.parse(key).hub === ADMIN);
    assert.equal(mirrors.reduce((a, [, v]) => a + v, 0), 3, `one VirtualKeyActivity mirror per event under hub=${ADMIN}: ${JSON.stringify(forwarded)}`);
    assert.equal(Object.keys(forwarded).length, 1 + mirrors.length, `no other hub forwarded: ${JSON.stringify(forwarded)}`);
    assert.deepEqual(
        familyDelta(s2, s3, "hubcast_frames_delivered_total"),
        { [H("tasks")]: 6, [H(ADMIN)]: 3 },
        "frames delivered: 3 events x 2 tenant clients, 3 mirrors x 1 admin",
    );
    const countDelta = s3.value(`${histogram}_count`) - s2.value(`${histogram}_count`);
    assert.equal(countDelta, 6, "publish-to-delivery observed once per delivery (3 tasks + 3 mirrors)");
    const buckets = bucketDeltas(s2, s3);
    assert.equal(buckets["+Inf"], countDelta, "+Inf bucket moved like _count");
    assert.equal(buckets["1.024"], countDelta, `an in-process delivery takes well under a second: ${JSON.stringify(buckets)}`);
    const sumDelta = s3.value(`${histogram}_sum`) - s2.value(`${histogram}_sum`);
    assert.ok(sumDelta >= 0 && sumDelta < 6, `_sum moved by a sane amount (${sumDelta} s)`);
    assert.deepEqual(familyDelta(s2, s3, "hubcast_events_dead_lettered_total"), {}, "nothing dead-lettered on the embedded bus");
    assert.equal(s3.get("hubcast_outbound_buffer_bytes"), 0, "nothing left queued to the (reading) clients");
    assert.equal(s3.get("hubcast_outbound_buffer_max_bytes"), 0);

    // --- closes: the JSON client, then MessagePack, then the admin
    await json.stop();
    const s4 = await settle(server, (s) => s.value("hubcast_connections", { hub: "tasks", protocol: "json" }) === s0.value("hubcast_connections", { hub: "tasks", protocol: "json" }));
    assert.deepEqual(familyDelta(s0, s4, "hubcast_disconnects_total"), { [R("tasks", "client_closed")]: 1 }, "disconnects after the JSON client left");
    assert.deepEqual(familyDelta(s0, s4, "hubcast_connections"), { [C("tasks", "messagepack")]: 1, [C(ADMIN, "json")]: 1 });
    assert.equal(s4.value("hubcast_groups") - s0.value("hubcast_groups"), 4, "groups unchanged: the MessagePack client is still in vkey-7 and the task");
    await mp.stop();
    const s5 = await settle(server, (s) => s.value("hubcast_connections", { hub: "tasks", protocol: "messagepack" }) === s0.value("hubcast_connections", { hub: "tasks", protocol: "messagepack" }));
    assert.deepEqual(familyDelta(s0, s5, "hubcast_connections"), { [C(ADMIN, "json")]: 1 });
    assert.equal(s5.value("hubcast_groups") - s0.value("hubcast_groups"), 2, "groups: the tasks groups are gone, admin and admin-vkey-7 remain");
    await adm.stop();
    const s6 = await settle(server, (s) => s.value("hubcast_connections", { hub: ADMIN, protocol: "json" }) === s0.value("hubcast_connections", { hub: ADMIN, protocol: "json" }));
    await sleep(200);
    const s7 = await scrape(server);
    assert.deepEqual(familyDelta(s0, s6, "hubcast_connections"), {}, "connections back to where they were");
    assert.deepEqual(
        familyDelta(s0, s7, "hubcast_disconnects_total"),
        { [R("tasks", "client_closed")]: 2, [R(ADMIN, "client_closed")]: 1 },
        "three client closes",
    );
    assert.equal(s7.value("hubcast_groups"), s0.value("hubcast_groups"), "groups back to where they were");
    assert.deepEqual(familyDelta(s0, s7, "hubcast_connects_total"), connected, "connects did not move after the connects");
});

test("rate limiting: refusals{reason=rate_limited} counts exactly the invocations the server refused", async () => {
    const token = await server.mintToken({ vkey: freshKey() });
    const s0 = await scrape(server);
    const c = await server.rawConnect({ token });
    assert.deepEqual(await c.handshake("json", 1), {});
    const N = 30;
    const taskId = uid("rl");
    let batch = "";
    for (let i = 1; i <= N; i++) batch += JSON.stringify({ type: 1, invocationId: String(i), target: "SubscribeToTask", arguments: [taskId] }) + RS;
    c.send(batch);
    const completions = [];
    while (completions.length < N) {
        const m = await c.next(5000);
        if (m.msg?.type === 3) completions.push(m.msg);
    }
    const limited = completions.filter((m) => m.error === HUB_EXCEPTION("SubscribeToTask", "Rate limit exceeded. Please try again later."));
    const ok = completions.filter((m) => m.error === undefined);
    assert.equal(limited.length + ok.length, N, `every completion is a success or a rate-limit refusal: ${JSON.stringify(completions)}`);
    assert.ok(limited.length >= 1 && ok.length >= 20, `the burst of 20 passes, the rest are limited (${ok.length} ok, ${limited.length} limited)`);
    const s1 = await scrape(server);
    assert.deepEqual(familyDelta(s0, s1, "hubcast_invocations_total"), { [M("tasks", "SubscribeToTask")]: N }, "every invocation counted");
    assert.deepEqual(familyDelta(s0, s1, "hubcast_invocation_refusals_total"), { [R("tasks", "rate_limited")]: limited.length }, "refusals");
    c.close();
    await c.waitClose(3000);
});

test("disconnect reasons: handshake_failed, protocol_error, token_expired, revoked", async () => {
    const s0 = await scrape(server);
    const token = await server.mintToken({ vkey: freshKey() });

    const badHandshake = await server.rawConnect({ token });
    badHandshake.send('{"protocol":"foo","version":1}' + RS);
    await badHandshake.waitClose(5000);

    const garbage = await server.rawConnect({ token });
    assert.deepEqual(await garbage.handshake("json", 1), {});
    garbage.send("this is not json" + RS);
    await garbage.waitClose(5000);

    const expiring = await server.rawConnect({ token: await server.mintToken({ vkey: freshKey(), ttl: "2s" }) });
    assert.deepEqual(await expiring.handshake("json", 1), {});

    const revokedKey = freshKey();
    const revoked = await server.rawConnect({ token: await server.mintToken({ vkey: revokedKey }) });
    assert.deepEqual(await revoked.handshake("json", 1), {});
    await server.publish(ADMIN, "admin.VirtualKeyDeleted", { virtualKeyId: Number(revokedKey) });
    await revoked.waitClose(5000);
    await expiring.waitClose(5000);

    const s1 = await settle(server, (s) => s.sum("hubcast_disconnects_total") - s0.sum("hubcast_disconnects_total") >= 4);
    await sleep(200);
    const s2 = await scrape(server);
    assert.deepEqual(
        familyDelta(s0, s2, "hubcast_disconnects_total"),
        {
            [R("tasks", "handshake_failed")]: 1,
            [R("tasks", "protocol_error")]: 1,
            [R("tasks", "token_expired")]: 1,
            [R("tasks", "revoked")]: 1,
        },
        "one disconnect per reason, under hub=tasks",
    );
    assert.deepEqual(familyDelta(s0, s1, "hubcast_connects_total"), { [C("tasks", "json")]: 3 }, "the failed handshake is no connect");
    assert.deepEqual(familyDelta(s0, s2, "hubcast_connections"), {}, "no connection left");
});

test("slow consumer: the buffer gauges show the backlog, then slow_consumer_closes and disconnects{slow_consumer}", async () => {
    const k = freshKey();
    const token = await server.mintToken({ vkey: k });
    const taskId = uid("slow");
    const slow = await server.rawConnect({ token });
    assert.deepEqual(await slow.handshake("json", 1), {});
    slow.sendJson({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [taskId] });
    assert.equal((await slow.next(5000)).msg.type, 3);
    const s0 = await scrape(server);
    assert.equal(s0.get("hubcast_outbound_buffer_bytes"), 0, "nothing queued before");

    slow.ws._socket.pause();
    const filler = "x".repeat(30 * 1024);
    let seq = 0;
    let backlog = null;
    let published = 0;
    const closed = (s) => s.value("hubcast_slow_consumer_closes_total") > s0.value("hubcast_slow_consumer_closes_total");
    // Fill the loopback socket buffers, then the server's queue for the client (1 MiB bound), until the
    // server gives up on it; remember a scrape that saw the queue hold bytes.
    let s1 = null;
    while (published < 1500) {
        await Promise.all(
            Array.from({ length: 8 }, () =>
                server.publish("tasks", `vkey.${k}.TaskProgress`, { taskId, taskType: "bulk", percentComplete: 1, message: `${seq++}:${filler}` }),
            ),
        );
        published += 8;
        const s = await scrape(server);
        if (!backlog && s.value("hubcast_outbound_buffer_bytes") > 0) backlog = s;
        if (closed(s)) {
            s1 = s;
            break;
        }
    }
    assert.ok(backlog, `outbound_buffer_bytes > 0 in some scrape while the client did not read (published ${published} events of 30 KiB)`);
    const queued = backlog.value("hubcast_outbound_buffer_bytes");
    assert.equal(backlog.get("hubcast_outbound_buffer_max_bytes"), queued, "the only backlogged client is the most backlogged one");
    assert.ok(s1, `the server closed the slow consumer (published ${published} events of 30 KiB)`);
    s1 = await settle(server, (s) => s.value("hubcast_connections", { hub: "tasks", protocol: "json" }) === 0);
    slow.ws._socket.resume();
    await slow.waitClose(5000);
    assert.equal(s1.value("hubcast_slow_consumer_closes_total") - s0.value("hubcast_slow_consumer_closes_total"), 1, "slow_consumer_closes +1");
    assert.deepEqual(familyDelta(s0, s1, "hubcast_disconnects_total"), { [R("tasks", "slow_consumer")]: 1 }, "disconnects by reason");
    const s2 = await settle(server, (s) => s.value("hubcast_outbound_buffer_bytes") === 0);
    assert.equal(s2.get("hubcast_outbound_buffer_bytes"), 0, "the backlog is gone with the connection");
    assert.equal(s2.get("hubcast_outbound_buffer_max_bytes"), 0);
});

test("exposition: OpenMetrics content type, # EOF, a TYPE for every family, hubcast_ names only", async () => {
    const token = await server.mintToken({ vkey: freshKey() });
    const c = await server.connect({ hub: "tasks", token }); // so that the connections gauge has a sample
    const s = await scrape(server);
    await c.stop();
    assert.match(s.contentType, /^application\/openmetrics-text; version=1\.0\.0/);
    assert.ok(s.text.endsWith("# EOF\n"), "ends with # EOF");
    const expected = {
        hubcast_connections: "gauge",
        hubcast_connects: "counter",
        hubcast_disconnects: "counter",
        hubcast_invocations: "counter",
        hubcast_invocation_refusals: "counter",
        hubcast_events_consumed: "counter",
        hubcast_events_forwarded: "counter",
        hubcast_frames_delivered: "counter",
        hubcast_slow_consumer_closes: "counter",
        hubcast_publish_to_delivery_seconds: "histogram",
        hubcast_groups: "gauge",
        hubcast_bindings: "gauge",
        hubcast_outbound_buffer_bytes: "gauge",
        hubcast_outbound_buffer_max_bytes: "gauge",
    };
    for (const [name, type] of Object.entries(expected)) assert.equal(s.types[name], type, `# TYPE ${name} ${type}`);
    for (const sample of s.samples) assert.match(sample.name, /^hubcast_/, `sample ${sample.name} is hubcast_*`);
});

// ---------------------------------------------------------------------------------------------
// RabbitMQ: router and edge each count their side
// ---------------------------------------------------------------------------------------------

const broker = await probeBroker();
const ctl = broker.ok ? await probeRabbitmqctl() : broker;

describe("metrics of the RabbitMQ roles", { skip: skipUnlessBroker(broker, ctl) }, () => {
    const world = new AmqpWorld({ vhost: true });
    let router;
    let edge;

    before(async () => {
        requireBroker(broker, ctl);
        await world.open();
        [router, edge] = await Promise.all([world.start("router"), world.start("edge", { node: "m1" })]);
    });
    after(async () => {
        await world.cleanup();
    });
    printStderrOnFailure(afterEach, world);

    test("router: consumed, forwarded, dead-lettered; edge: bindings, frames delivered, latency", async () => {
        const r0 = await scrape(router);
        const e0 = await scrape(edge);
        assert.equal(e0.get("hubcast_bindings"), 0, "an edge without connections holds no bindings");
        const q = world.edgeQueue("m1");
        assert.deepEqual(await world.bindingsOf(q), []);

        const t7 = await edge.mintToken({ vkey: "7" });
        const json = await edge.connect({ hub: "tasks", token: t7, protocol: "json" });
        const mp = await edge.connect({ hub: "tasks", token: t7, protocol: "messagepack" });
        const other = await edge.connect({ hub: "tasks", token: await edge.mintToken({ vkey: "9" }) });
        const taskId = uid("amqp");
        for (const c of [json, mp, other]) await c.invoke("SubscribeToTask", taskId);
        const e1 = await scrape(edge);
        assert.equal(e1.get("hubcast_bindings"), 2, "one binding per scope: tasks of key 7 (two connections) and of key 9");
        assert.deepEqual(await world.bindingsOf(q), ["d.tasks.t.7", "d.tasks.t.9"], "the broker agrees");
        assert.deepEqual(
            familyDelta(e0, e1, "hubcast_connections"),
            { [C("tasks", "json")]: 2, [C("tasks", "messagepack")]: 1 },
            "edge connections gauge",
        );

        const logs = [json, mp, other].map((c) => record(c, ["TaskProgress"]));
        for (let i = 1; i <= 3; i++) {
            await world.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "amqp", percentComplete: i }, { messageId: uid("ok") });
        }
        await world.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "amqp", percentComplete: 150 }, { messageId: uid("bad") });
        await world.publish("tasks", "vkey.7.TaskProgress", Buffer.from("{not json"), { messageId: uid("bad") });
        for (const r of logs.slice(0, 2)) await r.until((l) => l.length >= 3, 10_000, "3 events");
        const dead = await world.take(world.deadLetter, 2, 10_000);
        assert.equal(dead.length, 2, "both invalid messages were dead-lettered");

        const r1 = await settle(router, (s) => s.sum("hubcast_events_dead_lettered_total") - r0.sum("hubcast_events_dead_lettered_total") >= 2);
        const e2 = await settle(edge, (s) => s.value(`${histogram}_count`) - e0.value(`${histogram}_count`) >= 3);
        await sleep(300);
        assert.deepEqual(logs[2].log, [], "key 9 received nothing");

        // Router.
        assert.deepEqual(
            familyDelta(r0, r1, "hubcast_events_consumed_total"),
            { [E("tasks", "TaskProgress")]: 5 },
            "router: every message taken from the tasks queue, valid or not",
        );
        const forwarded = familyDelta(r0, r1, "hubcast_events_forwarded_total");
        assert.equal(forwarded[E("tasks", "TaskProgress")], 3, `router: the valid events forwarded to the edges: ${JSON.stringify(forwarded)}`);
        const mirrors = Object.entries(forwarded).filter(([key]) => JSON.parse(key).hub === ADMIN);
        assert.equal(mirrors.reduce((a, [, v]) => a + v, 0), 3, `router: one admin mirror per valid event: ${JSON.stringify(forwarded)}`);
        assert.equal(Object.keys(forwarded).length, 1 + mirrors.length, `router: nothing else forwarded: ${JSON.stringify(forwarded)}`);
        assert.deepEqual(familyDelta(r0, r1, "hubcast_events_dead_lettered_total"), { [H("tasks")]: 2 }, "router: dead letters by hub");
        assert.deepEqual(familyDelta(r0, r1, "hubcast_frames_delivered_total"), {}, "router: no clients, no frames");

        // Edge.
        assert.deepEqual(familyDelta(e0, e2, "hubcast_frames_delivered_total"), { [H("tasks")]: 6 }, "edge: 3 events x 2 connections of key 7");
        const countDelta = e2.value(`${histogram}_count`) - e0.value(`${histogram}_count`);
        assert.equal(countDelta, 3, "edge: one latency observation per delivery it received (no admin here: no mirrors bound)");
        const buckets = bucketDeltas(e0, e2);
        assert.equal(buckets["+Inf"], 3);
        // The AMQP timestamp has whole seconds: the measured latency is under 1 s plus the real latency.
        assert.equal(buckets["2.048"], 3, `edge: latencies are plausible (${JSON.stringify(buckets)})`);
        assert.deepEqual(familyDelta(e0, e2, "hubcast_events_dead_lettered_total"), {}, "edge: dead letters are the router's");

        // Unbinding follows the last connection of a scope.
        await other.stop();
        const e3 = await settle(edge, (s) => s.get("hubcast_bindings") === 1);
        assert.equal(e3.get("hubcast_bindings"), 1, "key 9's last connection gone: one binding left");
        await eventually(async () => JSON.stringify(await world.bindingsOf(q)) === '["d.tasks.t.7"]', 5000, "the broker has only d.tasks.t.7");
        await json.stop();
        const e4 = await scrape(edge);
        assert.equal(e4.get("hubcast_bindings"), 1, "key 7 still has its MessagePack connection");
        await mp.stop();
        const e5 = await settle(edge, (s) => s.get("hubcast_bindings") === 0);
        assert.equal(e5.get("hubcast_bindings"), 0, "no connection, no binding");
        assert.equal(e5.value("hubcast_groups"), e0.value("hubcast_groups"), "groups back to where they were");
    });

    test("amqp_reconnects{role} moves by one on each role when the broker drops its connections", async () => {
        const r0 = await scrape(router);
        const e0 = await scrape(edge);
        await rabbitmqctl(["close_all_connections", "-p", world.vhost, "hubcast metrics test"]);
        await Promise.all([
            eventually(
                async () => (await scrape(router)).sum("hubcast_amqp_reconnects_total") > r0.sum("hubcast_amqp_reconnects_total"),
                10_000,
                "router counted a reconnect",
            ),
            eventually(
                async () => (await scrape(edge)).sum("hubcast_amqp_reconnects_total") > e0.sum("hubcast_amqp_reconnects_total"),
                10_000,
                "edge counted a reconnect",
            ),
        ]);
        await router.waitReady();
        await edge.waitReady();
        await sleep(500);
        const r1 = await scrape(router);
        const e1 = await scrape(edge);
        assert.deepEqual(familyDelta(r0, r1, "hubcast_amqp_reconnects_total"), { [L({ role: "router" })]: 1 }, "router");
        assert.deepEqual(familyDelta(e0, e1, "hubcast_amqp_reconnects_total"), { [L({ role: "edge" })]: 1 }, "edge");
        assert.equal(r1.types.hubcast_amqp_reconnects, "counter");
        assert.equal(r1.types.hubcast_events_dead_lettered, "counter");
        await world.reconnect();
        // Still delivering after the reconnect (the counters above are not from a dead pipeline).
        const token = await edge.mintToken({ vkey: "7" });
        const c = await edge.connect({ hub: "tasks", token });
        const taskId = uid("after");
        await c.invoke("SubscribeToTask", taskId);
        const r = record(c, ["TaskProgress"]);
        await world.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "amqp", percentComplete: 5 }, { messageId: uid("m") });
        await r.until((l) => l.length >= 1, 10_000, "an event after the reconnect");
        await withTimeout(c.stop(), 5000, "stop");
    });
});
