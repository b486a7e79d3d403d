// Trace export (build with `--features otel`): a producer's `traceparent` header continues through the
// router's `route` span and the edge's `deliver` span, exported over OTLP/HTTP JSON to an in-test receiver.
// A process without `tracing.otlp_endpoint` exports nothing (even with the standard OTEL_* variables
// pointing at a receiver), and with `tracing.sample_ratio = 0` an unsampled producer trace stays unsampled.
// The last suite checks that export does not hinge on the log level (RUST_LOG=warn, the harness default).
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { execFile } from "node:child_process";
import { record, uid, sleep, Server, BIN } from "./harness.js";
import { AmqpWorld, probeBroker, skipUnlessBroker, requireBroker, eventually } from "./amqp-harness.js";
import { OtlpReceiver } from "./obs-helpers.js";

const broker = await probeBroker();
const SPAN_WAIT_MS = 5000;
// Longer than many batch-export delays (200 ms): what has not arrived by then is not coming.
const QUIET_MS = 2000;

const hex = (bytes) => crypto.randomBytes(bytes).toString("hex");
const traceparent = (traceId, spanId, flags = "01") => `00-${traceId}-${spanId}-${flags}`;

function tracingEnv(receiver, extra = {}) {
    return {
        HUBCAST_TRACING__OTLP_ENDPOINT: receiver.url,
        HUBCAST_TRACING__OTLP_PROTOCOL: "http/json",
        OTEL_BSP_SCHEDULE_DELAY: "200",
        // The spans are info-level; the harness default is RUST_LOG=warn (see the last suite for that case).
        RUST_LOG: "info",
        ...extra,
    };
}

/** Publishes a TaskProgress for key 7 with amqplib, with a traceparent header when given. */
async function publishTraced(world, taskId, tp, percent = 10) {
    const headers = tp ? { traceparent: tp } : undefined;
    await world.publish(
        "tasks",
        "vkey.7.TaskProgress",
        { taskId, taskType: "trace", percentComplete: percent, message: `p${percent}` },
        { messageId: uid("m"), headers },
    );
}

/** `TRACEPARENT=... hubcast publish` in a world; resolves with {code, stdout, stderr}. */
function cliPublishTraced(world, { routingKey, payload, tp }) {
    const probe = new Server(world.env());
    const env = { ...probe.env, TRACEPARENT: tp };
    const args = ["publish", "--hub", "tasks", "--routing-key", routingKey, JSON.stringify(payload)];
    return new Promise((resolve) => {
        execFile(BIN, args, { env, timeout: 20_000 }, (err, stdout, stderr) => {
            resolve({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, stdout, stderr });
        });
    });
}

/** A client of key 7 on the edge, subscribed to task `taskId`, recording TaskProgress. */
async function subscribedClient(edge, taskId) {
    const token = await edge.mintToken({ vkey: "7" });
    const c = await edge.connect({ hub: "tasks", token });
    await c.invoke("SubscribeToTask", taskId);
    return { c, r: record(c, ["TaskProgress"]) };
}

describe("OTLP trace export through router and edge", { skip: skipUnlessBroker(broker) }, () => {
    // on: router and edge exporting to `received`; off: the same roles without tracing.otlp_endpoint, but
    // with the standard OTEL_EXPORTER_OTLP_* variables pointing at `stray` (which must stay empty).
    const on = new AmqpWorld();
    const off = new AmqpWorld();
    const received = new OtlpReceiver("receiver of the exporting router+edge");
    const stray = new OtlpReceiver("receiver the non-exporting router+edge must not reach");
    let router;
    let edge;
    let offEdge;

    before(async () => {
        requireBroker(broker);
        await Promise.all([received.start(), stray.start(), on.open(), off.open()]);
        const strayEnv = {
            OTEL_EXPORTER_OTLP_ENDPOINT: stray.url,
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${stray.url}/v1/traces`,
            OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
            OTEL_BSP_SCHEDULE_DELAY: "200",
            RUST_LOG: "info", // as the exporting pair: only the endpoint differs
        };
        [router, edge] = await Promise.all([
            on.start("router", { env: tracingEnv(received, { HUBCAST_TRACING__SERVICE_NAME: "hubcast-router-under-test" }) }),
            on.start("edge", { node: "trace-e1", env: tracingEnv(received, { HUBCAST_TRACING__SERVICE_NAME: "hubcast-edge-under-test" }) }),
        ]);
        [, offEdge] = await Promise.all([
            off.start("router", { env: strayEnv }),
            off.start("edge", { node: "trace-off-e1", env: strayEnv }),
        ]);
    });
    after(async () => {
        await Promise.all([on.cleanup(), off.cleanup()]);
        await Promise.all([received.stop(), stray.stop()]);
    });
    afterEach((t) => {
        if (t.passed === false) {
            console.error(`--- after failing test "${t.name}" ---\n${received.describe()}\n${stray.describe()}`);
            console.error(on.stderrTails());
            console.error(off.stderrTails());
        }
    });

    test("a producer's traceparent continues: route (router) is its child, deliver (edge) the route's child", async () => {
        const taskId = uid("a");
        const { c, r } = await subscribedClient(edge, taskId);
        const traceId = hex(16);
        const producerSpan = hex(8);
        await publishTraced(on, taskId, traceparent(traceId, producerSpan));

        await r.until((l) => l.length >= 1, 10_000, "the traced TaskProgress");
        assert.deepEqual(r.log, [{ event: "TaskProgress", args: [taskId, 10, "p10"] }], "the client receives the event");

        const spans = await eventually(
            () => {
                const s = received.spansOf(traceId);
                return s.some((x) => x.name === "route") && s.some((x) => x.name === "deliver") ? s : null;
            },
            SPAN_WAIT_MS,
            () => `a route and a deliver span of trace ${traceId} within ${SPAN_WAIT_MS} ms; ${received.describe()}`,
        );
        const routes = spans.filter((s) => s.name === "route");
        const delivers = spans.filter((s) => s.name === "deliver");
        assert.equal(routes.length, 1, `exactly one route span: ${JSON.stringify(routes)}`);
        const route = routes[0];
        assert.equal(route.traceId, traceId, "route continues the producer's trace id");
        assert.equal(route.parentSpanId, producerSpan, "route's parent is the producer's span");
        assert.match(route.spanId, /^[0-9a-f]{16}$/);
        assert.notEqual(route.spanId, producerSpan, "route has its own span id");
        assert.equal(route.service, "hubcast-router-under-test", "route comes from the router (its service.name)");

        assert.equal(delivers.length, 1, `exactly one deliver span (one edge, one delivery): ${JSON.stringify(delivers)}`);
        const deliver = delivers[0];
        assert.equal(deliver.traceId, traceId, "deliver is in the producer's trace");
        assert.equal(deliver.parentSpanId, route.spanId, "deliver's parent is the router's route span");
        assert.notEqual(deliver.spanId, route.spanId);
        assert.equal(deliver.service, "hubcast-edge-under-test", "deliver comes from the edge (its service.name)");

        // The export really is OTLP/HTTP JSON to <endpoint>/v1/traces.
        for (const req of received.requests) {
            assert.equal(req.method, "POST");
            assert.equal(req.path, "/v1/traces");
            assert.match(req.contentType, /^application\/json/);
        }
        assert.deepEqual(received.errors, [], "every export body is JSON");
        await c.stop();
    });

    test("`TRACEPARENT=... hubcast publish` carries the trace the same way", async () => {
        const taskId = uid("a");
        const { c, r } = await subscribedClient(edge, taskId);
        const traceId = hex(16);
        const producerSpan = hex(8);
        const res = await cliPublishTraced(on, {
            routingKey: "vkey.7.TaskProgress",
            payload: { taskId, taskType: "trace", percentComplete: 20, message: "cli" },
            tp: traceparent(traceId, producerSpan),
        });
        assert.equal(res.code, 0, `hubcast publish failed: ${res.stderr}`);
        await r.until((l) => l.length >= 1, 10_000, "the TaskProgress published by the CLI");
        assert.deepEqual(r.log, [{ event: "TaskProgress", args: [taskId, 20, "cli"] }]);
        const spans = await eventually(
            () => {
                const s = received.spansOf(traceId);
                return s.some((x) => x.name === "route") && s.some((x) => x.name === "deliver") ? s : null;
            },
            SPAN_WAIT_MS,
            () => `route and deliver spans of trace ${traceId}; ${received.describe()}`,
        );
        const route = spans.find((s) => s.name === "route");
        const deliver = spans.find((s) => s.name === "deliver");
        assert.equal(route.parentSpanId, producerSpan, "route's parent is the span of TRACEPARENT");
        assert.equal(deliver.parentSpanId, route.spanId, "deliver's parent is route");
        await c.stop();
    });

    test("without tracing.otlp_endpoint nothing is exported (positive control: the exporting pair, same events)", async () => {
        const taskId = uid("a");
        const offClient = await subscribedClient(offEdge, taskId);
        const onClient = await subscribedClient(edge, taskId);
        const offTrace = hex(16);
        const onTrace = hex(16);
        await publishTraced(off, taskId, traceparent(offTrace, hex(8)), 30);
        await publishTraced(on, taskId, traceparent(onTrace, hex(8)), 30);
        await offClient.r.until((l) => l.length >= 1, 10_000, "the event on the non-exporting edge");
        await onClient.r.until((l) => l.length >= 1, 10_000, "the event on the exporting edge");
        assert.deepEqual(offClient.r.log, [{ event: "TaskProgress", args: [taskId, 30, "p30"] }]);

        // Positive control: the exporting pair's spans of its event arrive...
        await eventually(
            () => received.spansOf(onTrace).filter((s) => s.name === "route" || s.name === "deliver").length >= 2,
            SPAN_WAIT_MS,
            () => `positive control: spans of ${onTrace}; ${received.describe()}`,
        );
        // ...and by then, and a while after, the non-exporting pair has sent nothing anywhere we listen.
        await sleep(QUIET_MS);
        assert.equal(stray.requests.length, 0, `nothing reaches the OTEL_EXPORTER_OTLP_* receiver: ${stray.describe()}`);
        assert.deepEqual(received.spansOf(offTrace), [], "the non-exporting pair's trace appears nowhere");
        await offClient.c.stop();
        await onClient.c.stop();
    });
});

describe("sampling: tracing.sample_ratio = 0", { skip: skipUnlessBroker(broker) }, () => {
    const world = new AmqpWorld();
    const received = new OtlpReceiver("receiver of the ratio-0 router+edge");
    let edge;

    before(async () => {
        requireBroker(broker);
        await Promise.all([received.start(), world.open()]);
        const env = tracingEnv(received, { HUBCAST_TRACING__SAMPLE_RATIO: "0" });
        [, edge] = await Promise.all([world.start("router", { env }), world.start("edge", { node: "trace-s0", env })]);
    });
    after(async () => {
        await world.cleanup();
        await received.stop();
    });
    afterEach((t) => {
        if (t.passed === false) console.error(`--- after failing test "${t.name}" ---\n${received.describe()}\n${world.stderrTails()}`);
    });

    test("an unsampled producer trace (-00) yields no spans; a sampled one (-01) still does (parent-based)", async () => {
        const taskId = uid("a");
        const { c, r } = await subscribedClient(edge, taskId);
        const unsampled = hex(16);
        const sampled = hex(16);
        await publishTraced(world, taskId, traceparent(unsampled, hex(8), "00"), 40);
        await publishTraced(world, taskId, traceparent(sampled, hex(8), "01"), 41);
        await r.until((l) => l.length >= 2, 10_000, "both events");
        assert.deepEqual(
            r.log.map((e) => e.args),
            [
                [taskId, 40, "p40"],
                [taskId, 41, "p41"],
            ],
            "both events are delivered, sampled or not",
        );
        // Positive control: the producer's sampling decision is followed, so the sampled trace is exported.
        await eventually(
            () => {
                const s = received.spansOf(sampled);
                return s.some((x) => x.name === "route") && s.some((x) => x.name === "deliver");
            },
            SPAN_WAIT_MS,
            () => `route and deliver spans of the sampled trace ${sampled}; ${received.describe()}`,
        );
        await sleep(QUIET_MS);
        assert.deepEqual(received.spansOf(unsampled), [], `no span of the unsampled trace ${unsampled}`);
        const names = received.spans.map((s) => `${s.name}:${s.traceId}`).sort();
        assert.deepEqual(
            names,
            [`deliver:${sampled}`, `route:${sampled}`],
            "exactly the sampled trace's route and deliver spans, nothing else (no root traces at ratio 0)",
        );
        await c.stop();
    });
});

describe("export does not depend on the log level: RUST_LOG=warn (the harness default)", { skip: skipUnlessBroker(broker) }, () => {
    const world = new AmqpWorld();
    const received = new OtlpReceiver("receiver of the RUST_LOG=warn router+edge");
    let edge;

    before(async () => {
        requireBroker(broker);
        await Promise.all([received.start(), world.open()]);
        const env = tracingEnv(received, { RUST_LOG: "warn" });
        [, edge] = await Promise.all([world.start("router", { env }), world.start("edge", { node: "trace-warn", env })]);
    });
    after(async () => {
        await world.cleanup();
        await received.stop();
    });
    afterEach((t) => {
        if (t.passed === false) console.error(`--- after failing test "${t.name}" ---\n${received.describe()}\n${world.stderrTails()}`);
    });

    test("with RUST_LOG=warn the route and deliver spans are still exported", async () => {
        const taskId = uid("a");
        const { c, r } = await subscribedClient(edge, taskId);
        const traceId = hex(16);
        const producerSpan = hex(8);
        await publishTraced(world, taskId, traceparent(traceId, producerSpan), 50);
        await r.until((l) => l.length >= 1, 10_000, "the traced TaskProgress");
        assert.deepEqual(r.log, [{ event: "TaskProgress", args: [taskId, 50, "p50"] }]);
        const spans = await eventually(
            () => {
                const s = received.spansOf(traceId);
                return s.some((x) => x.name === "route") && s.some((x) => x.name === "deliver") ? s : null;
            },
            SPAN_WAIT_MS,
            () => `route and deliver spans of trace ${traceId} with RUST_LOG=warn; ${received.describe()}`,
        );
        const route = spans.find((s) => s.name === "route");
        assert.equal(route.parentSpanId, producerSpan);
        assert.equal(spans.find((s) => s.name === "deliver").parentSpanId, route.spanId);
        await c.stop();
    });
});
