// POST /api/v1/publish and `hubcast publish` (contract sections 4 and 7): validation with a reason,
// authentication, and messageId dedupe.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, record, uid, sleep, MASTER_KEY } from "./harness.js";

const server = useServer();
const SETTLE_MS = 400;

let keyCounter = 0;
function freshKey() {
    keyCounter += 1;
    return String(900000 + (process.pid % 1000) * 100 + keyCounter);
}

async function taskClient(vkey, taskId, protocol = "json") {
    const token = await server.mintToken({ vkey });
    const c = await server.connect({ hub: "tasks", token, protocol });
    await c.invoke("SubscribeToTask", taskId);
    return { c, r: record(c, ["TaskProgress", "TaskStarted"]) };
}

function assertBadRequest(res, what, mustMention) {
    assert.equal(res.status, 400, `${what}: ${res.status} ${res.text}`);
    assert.equal(typeof res.body, "object", `${what}: JSON body, got ${res.text}`);
    assert.equal(typeof res.body.error, "string", `${what}: {"error": reason}, got ${res.text}`);
    assert.ok(res.body.error.length > 0, `${what}: a reason`);
    // The reason names what is wrong: the field or the offending value (or the hub / event).
    if (mustMention) assert.match(res.body.error, mustMention, `${what}: the reason says why (${res.body.error})`);
}

test("400 with a reason for every kind of invalid event; nothing is delivered", async () => {
    const vkey = freshKey();
    const taskId = uid("bad");
    const { c, r } = await taskClient(vkey, taskId);
    const good = { taskId, taskType: "t", percentComplete: 10 };
    const cases = [
        ["unknown hub", { hub: "nope", routingKey: `vkey.${vkey}.TaskProgress`, payload: good }, /nope/],
        ["hub by its path", { hub: "/hubs/tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: good }, null],
        ["unknown event", { hub: "tasks", routingKey: `vkey.${vkey}.TaskExploded`, payload: good }, /TaskExploded/],
        ["event of another hub", { hub: "tasks", routingKey: `vkey.${vkey}.SpendUpdate`, payload: { amount: 1, totalSpend: 1 } }, /SpendUpdate/],
        ["percentComplete 150", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { ...good, percentComplete: 150 } }, /percentComplete|150/],
        ["percentComplete -1", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { ...good, percentComplete: -1 } }, /percentComplete|-1/],
        ["percentComplete 50.5", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { ...good, percentComplete: 50.5 } }, /percentComplete|50\.5/],
        ["percentComplete as a string", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { ...good, percentComplete: "10" } }, /percentComplete|"10"/],
        ["missing taskId", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { taskType: "t", percentComplete: 1 } }, /taskId/],
        ["missing taskType", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { taskId, percentComplete: 1 } }, /taskType/],
        ["missing percentComplete", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { taskId, taskType: "t" } }, /percentComplete/],
        ["payload not an object", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: [taskId] }, null],
        ["all on tasks", { hub: "tasks", routingKey: "all.TaskProgress", payload: good }, null],
        ["admin on tasks", { hub: "tasks", routingKey: "admin.TaskProgress", payload: good }, null],
        ["vkey on admin", { hub: "admin-notifications", routingKey: `vkey.${vkey}.SystemAlert`, payload: { severity: "info", title: "t", message: "m" } }, null],
        ["all on admin", { hub: "admin-notifications", routingKey: "all.SystemAlert", payload: { severity: "info", title: "t", message: "m" } }, null],
        ["admin on spend", { hub: "spend", routingKey: "admin.SpendUpdate", payload: { amount: 1, totalSpend: 1 } }, null],
        ["all on spend", { hub: "spend", routingKey: "all.SpendUpdate", payload: { amount: 1, totalSpend: 1 } }, null],
        ["taskId with a space", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { ...good, taskId: "bad id" } }, /taskId|bad id/],
        ["taskId with a slash", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { ...good, taskId: "a/b" } }, /taskId|a\/b/],
        ["taskId too long", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { ...good, taskId: "x".repeat(129) } }, /taskId|xxxxxxxx/],
        ["taskType with a dot", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { ...good, taskType: "a.b" } }, /taskType|a\.b/],
        ["requestId forbidden", { hub: "video-generation", routingKey: `vkey.${vkey}.VideoGenerationProgress`, payload: { requestId: "r?1", percentComplete: 1 } }, /requestId|r\?1/],
        ["provider forbidden", { hub: "admin-notifications", routingKey: "admin.ProviderHealthStatus", payload: { provider: "open ai", status: "healthy", checkedAt: "2025-11-25T21:00:00Z" } }, /provider|open ai/],
        ["virtual key id forbidden", { hub: "tasks", routingKey: "vkey.bad$key.TaskProgress", payload: good }, null],
        ["virtual key id too long", { hub: "tasks", routingKey: `vkey.${"k".repeat(65)}.TaskProgress`, payload: good }, null],
        ["bad health status", { hub: "admin-notifications", routingKey: "admin.ProviderHealthStatus", payload: { provider: "p", status: "sick", checkedAt: "2025-11-25T21:00:00Z" } }, /status|sick/],
        ["bad severity", { hub: "admin-notifications", routingKey: "admin.SystemAlert", payload: { severity: "loud", title: "t", message: "m" } }, /severity|loud/],
        ["SpendUpdate without amount", { hub: "spend", routingKey: `vkey.${vkey}.SpendUpdate`, payload: { totalSpend: 1 } }, /amount/],
        ["webhook url not a URL", { hub: "webhooks", routingKey: `vkey.${vkey}.DeliveryAttempted`, payload: { url: "not a url" } }, /url|not a url/],
        ["missing routingKey", { hub: "tasks", payload: good }, null],
        ["missing payload", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress` }, null],
    ];
    for (const [what, body, mention] of cases) {
        assertBadRequest(await server.publishRaw(body), what, mention);
    }
    assertBadRequest(await server.publishRaw("{not json"), "invalid JSON");
    // Positive control, then nothing but it arrived.
    const ok = await server.publishRaw({ hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { ...good, message: "control" } });
    assert.equal(ok.status, 202, ok.text);
    await r.until((l) => l.length >= 1);
    await sleep(SETTLE_MS);
    assert.deepEqual(r.log.map((e) => e.args), [[taskId, 10, "control"]]);
    await c.stop();
});

test("202 with {messageId, delivered}", async () => {
    const vkey = freshKey();
    const taskId = uid("ok");
    const { c, r } = await taskClient(vkey, taskId);
    const messageId = uid("msg");
    const res = await server.publishRaw({
        hub: "tasks",
        routingKey: `vkey.${vkey}.TaskProgress`,
        messageId,
        payload: { taskId, taskType: "t", percentComplete: 5 },
    });
    assert.equal(res.status, 202, res.text);
    assert.deepEqual(res.body, { messageId, delivered: 1 });
    await r.until((l) => l.length >= 1);
    const none = await server.publishRaw({
        hub: "tasks",
        routingKey: `vkey.${vkey}.TaskProgress`,
        messageId: uid("msg"),
        payload: { taskId: uid("nobody"), taskType: "t", percentComplete: 5 },
    });
    assert.equal(none.status, 202, none.text);
    assert.equal(none.body.delivered, 0, "nobody subscribed");
    await c.stop();
});

test("401 without or with a wrong master key; a virtual-key token may not publish", async () => {
    const body = { hub: "tasks", routingKey: "vkey.7.TaskProgress", payload: { taskId: "a", taskType: "t", percentComplete: 1 } };
    assert.equal((await server.publishRaw(body, { headers: {} })).status, 401);
    assert.equal((await server.publishRaw(body, { headers: { "X-API-Key": "wrong-master-key" } })).status, 401);
    assert.equal((await server.publishRaw(body, { headers: { Authorization: "Bearer wrong-master-key" } })).status, 401);
    const vkeyToken = await server.mintToken({ vkey: "7" });
    const res = await server.publishRaw(body, { headers: { Authorization: `Bearer ${vkeyToken}` } });
    assert.ok(res.status === 401 || res.status === 403, `virtual-key token: ${res.status}`);
    // Positive controls.
    assert.equal((await server.publishRaw(body, { headers: { "X-API-Key": MASTER_KEY } })).status, 202);
    assert.equal((await server.publishRaw(body, { headers: { Authorization: `Bearer ${MASTER_KEY}` } })).status, 202);
});

test("messageId dedupe: the same id twice is accepted and delivered once; per hub", async () => {
    const vkey = freshKey();
    const taskId = uid("dup");
    const { c, r } = await taskClient(vkey, taskId, "messagepack");
    const messageId = uid("dup-msg");
    const publish = async (id, message) => {
        const res = await server.publishRaw({
            hub: "tasks",
            routingKey: `vkey.${vkey}.TaskProgress`,
            messageId: id,
            payload: { taskId, taskType: "t", percentComplete: 20, message },
        });
        assert.equal(res.status, 202, res.text);
    };
    await publish(messageId, "first");
    await publish(messageId, "second with the same id");
    await publish(uid("other-msg"), "another id");
    // Same id on another hub is another message.
    const video = await server.connect({ hub: "video-generation", token: await server.mintToken({ vkey }) });
    const requestId = uid("req");
    await video.invoke("SubscribeToRequest", requestId);
    const rv = record(video, ["VideoGenerationProgress"]);
    const vres = await server.publishRaw({
        hub: "video-generation",
        routingKey: `vkey.${vkey}.VideoGenerationProgress`,
        messageId,
        payload: { requestId, percentComplete: 1 },
    });
    assert.equal(vres.status, 202, vres.text);
    await r.until((l) => l.length >= 2);
    await rv.until((l) => l.length >= 1);
    await sleep(SETTLE_MS);
    assert.deepEqual(r.log.map((e) => e.args[2]), ["first", "another id"]);
    assert.equal(rv.log.length, 1);
    await c.stop();
    await video.stop();
});

test("hubcast publish: success prints a JSON line and the client receives the event", async () => {
    const vkey = freshKey();
    const taskId = uid("cli");
    const { c, r } = await taskClient(vkey, taskId);
    const out = await server.cliPublish({
        hub: "tasks",
        routingKey: `vkey.${vkey}.TaskStarted`,
        payload: { taskId, taskType: "cli", metadata: { via: "cli" } },
    });
    assert.equal(out.code, 0, `exit ${out.code}\nstdout: ${out.stdout}\nstderr: ${out.stderr}`);
    const lines = out.stdout.trim().split("\n");
    assert.equal(lines.length, 1, `one line on stdout: ${JSON.stringify(out.stdout)}`);
    const parsed = JSON.parse(lines[0]);
    assert.equal(typeof parsed, "object");
    await r.until((l) => l.length >= 1);
    assert.deepEqual(r.log[0], { event: "TaskStarted", args: [taskId, "cli", { via: "cli" }] });

    // --message-id: dedupe with the HTTP API too.
    const messageId = uid("cli-msg");
    const a = await server.cliPublish({
        hub: "tasks",
        routingKey: `vkey.${vkey}.TaskProgress`,
        messageId,
        payload: { taskId, taskType: "cli", percentComplete: 30, message: "cli once" },
    });
    assert.equal(a.code, 0, a.stderr);
    assert.equal(JSON.parse(a.stdout.trim()).messageId, messageId);
    const b = await server.cliPublish({
        hub: "tasks",
        routingKey: `vkey.${vkey}.TaskProgress`,
        messageId,
        payload: { taskId, taskType: "cli", percentComplete: 31, message: "cli twice" },
    });
    assert.equal(b.code, 0, b.stderr);
    await server.publish("tasks", `vkey.${vkey}.TaskProgress`, { taskId, taskType: "cli", percentComplete: 32, message: "control" }, { messageId });
    await server.publish("tasks", `vkey.${vkey}.TaskProgress`, { taskId, taskType: "cli", percentComplete: 33, message: "control 2" });
    await r.until((l) => l.length >= 3);
    await sleep(SETTLE_MS);
    assert.deepEqual(r.log.slice(1).map((e) => e.args[2]), ["cli once", "control 2"]);
    await c.stop();
});

test("hubcast publish: refusals exit with code 1 and the reason on stderr", async () => {
    const vkey = freshKey();
    const taskId = uid("cli-bad");
    const { c, r } = await taskClient(vkey, taskId);
    const cases = [
        ["percentComplete 150", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { taskId, taskType: "t", percentComplete: 150 } }, /percentComplete|150/],
        ["unknown hub", { hub: "nope", routingKey: `vkey.${vkey}.TaskProgress`, payload: { taskId, taskType: "t", percentComplete: 1 } }, /nope/],
        ["unknown event", { hub: "tasks", routingKey: `vkey.${vkey}.TaskExploded`, payload: { taskId, taskType: "t" } }, /TaskExploded/],
        ["audience", { hub: "tasks", routingKey: "all.TaskProgress", payload: { taskId, taskType: "t", percentComplete: 1 } }, null],
        ["invalid JSON", { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: "{not json" }, null],
        [
            "wrong master key",
            { hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { taskId, taskType: "t", percentComplete: 2 }, env: { HUBCAST_AUTH__MASTER_KEY: "wrong-master-key" } },
            null,
        ],
    ];
    for (const [what, args, mention] of cases) {
        const out = await server.cliPublish(args);
        assert.equal(out.code, 1, `${what}: exit ${out.code}\nstdout: ${out.stdout}\nstderr: ${out.stderr}`);
        assert.ok(out.stderr.trim().length > 0, `${what}: a reason on stderr`);
        if (mention) assert.match(out.stderr, mention, `${what}: ${out.stderr}`);
    }
    // Positive control.
    const ok = await server.cliPublish({ hub: "tasks", routingKey: `vkey.${vkey}.TaskProgress`, payload: { taskId, taskType: "t", percentComplete: 3, message: "control" } });
    assert.equal(ok.code, 0, ok.stderr);
    await r.until((l) => l.length >= 1);
    await sleep(SETTLE_MS);
    assert.deepEqual(r.log.map((e) => e.args), [[taskId, 3, "control"]]);
    await c.stop();
});
