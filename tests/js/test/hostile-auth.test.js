// Hostile clients against authentication and connection identity: odd token claims, a connection token
// reattached hundreds of times, resumes at the per-key cap, another key's token on a live connection id,
// the invocation limiter with unknown methods, and group-name collisions.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import {
    useServer,
    uid,
    sleep,
    withTimeout,
    record,
    signJwt,
    HUB_EXCEPTION,
    NO_SUCH_METHOD,
    HubConnectionState,
    HttpTransportType,
    RS,
} from "./harness.js";
import {
    freshKey,
    bearer,
    trackPanics,
    assertNoPanic,
    signRawJwt,
    nowSecs,
    timedFetch,
    invoke,
    stop,
} from "./hostile-helpers.js";

// Nothing may hang: every test is bounded.
const TEST_OPTS = { timeout: 30000 };

const server = useServer();
trackPanics(server);
const audServer = useServer({ HUBCAST_AUTH__AUDIENCE: "hubcast" });
trackPanics(audServer);

const json = (msg) => JSON.stringify(msg) + RS;

/** Polls `fn` until it returns a truthy value (at most `ms`); returns the last value. */
async function eventually(fn, ms = 3000) {
    const deadline = Date.now() + ms;
    for (;;) {
        const v = await fn();
        if (v || Date.now() > deadline) return v;
        await sleep(100);
    }
}

/** Negotiates (v1) and returns {jwt, token (connectionToken), query: "id=..."}. */
async function negotiated(srv, { vkey = freshKey(), stateful = false, jwt } = {}) {
    jwt ??= await srv.mintToken({ vkey });
    const res = await srv.negotiate({ headers: bearer(jwt), query: stateful ? "useStatefulReconnect=true" : "" });
    assert.equal(res.status, 200, `negotiate: ${res.status} ${res.text}`);
    if (stateful) assert.equal(res.body.useStatefulReconnect, true, res.text);
    const token = res.body.connectionToken;
    return { jwt, vkey, token, query: `id=${encodeURIComponent(token)}` };
}

/** Opens a raw WebSocket; resolves {client} when open or {status} when the upgrade was refused. */
async function tryRaw(srv, query, jwt) {
    try {
        const client = await withTimeout(srv.rawConnect({ query, token: jwt }), 5000, "WebSocket open");
        return { client, openedAt: Date.now() };
    } catch (err) {
        return { status: err.status ?? err.message };
    }
}

/** Resolves with the response status as soon as the headers arrive (the body is cancelled), or null. */
async function statusOnly(url, init = {}, ms = 3000) {
    const controller = new AbortController();
    const t = setTimeout(() => controller.abort(), ms);
    try {
        const res = await fetch(url, { ...init, signal: controller.signal });
        const status = res.status;
        controller.abort();
        return status;
    } catch {
        return null;
    } finally {
        clearTimeout(t);
    }
}

describe("stateful reconnect: reattaching one connection token", () => {
    test("300 more WebSockets on one token: each replaces the previous or gets 409, at most one stays open; after Close, 404", TEST_OPTS, async (t) => {
        const { jwt, query } = await negotiated(server, { stateful: true });
        const first = await server.rawConnect({ query, token: jwt });
        assert.deepEqual(await first.handshake("json", 2), {});
        const opened = [{ client: first, openedAt: Date.now(), closedAt: null }];
        const track = (entry) => entry.client.closed.then(() => (entry.closedAt = Date.now()));
        track(opened[0]);
        const refused = new Map();
        for (let batch = 0; batch < 30; batch++) {
            const results = await Promise.all(Array.from({ length: 10 }, () => tryRaw(server, query, jwt)));
            for (const r of results) {
                if (r.client) {
                    const entry = { client: r.client, openedAt: r.openedAt, closedAt: null };
                    track(entry);
                    opened.push(entry);
                } else refused.set(r.status, (refused.get(r.status) ?? 0) + 1);
            }
        }
        await sleep(3000);
        const open = opened.filter((e) => e.client.closeInfo === null);
        t.diagnostic(`${opened.length - 1} of 300 opened, refused ${JSON.stringify([...refused])}, ${open.length} still open after 3 s`);
        for (const [status] of refused) assert.equal(status, 409, `a reattach was refused with ${status}, not 409`);
        assert.ok(open.length <= 1, `${open.length} sockets on one connection token are still open 3 s later`);

        // End the connection with a Close message on the socket that holds it; then the token is gone.
        const holder = open[0]?.client;
        assert.ok(holder, "one socket still holds the connection");
        holder.send(json({ type: 7 }));
        await holder.waitClose(5000);
        const status = await eventually(async () => {
            const r = await server.wsStatus({ query: `${query}&access_token=${jwt}` });
            return r.status === 404 ? 404 : null;
        }, 2000);
        assert.equal(status, 404, "a WebSocket on the ended connection's token answers 404");
        for (const e of opened) {
            e.client.terminate();
            server.rawClients.delete(e.client);
        }
        assertNoPanic(server);
        await server.assertServes({ vkey: freshKey() });
    });

    test("a real resume at the per-key cap (max_connections 1): 101 and a Sequence message, not 429", TEST_OPTS, async () => {
        const vkey = freshKey();
        const jwt = await server.mintToken({ vkey, maxConnections: 1 });
        const { query } = await negotiated(server, { jwt, stateful: true });
        const c = await server.rawConnect({ query, token: jwt });
        assert.deepEqual(await c.handshake("json", 2), {});
        c.sendJson({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [uid("cap")] });
        let m = await c.next(5000);
        while (m.msg.type === 8) m = await c.next(5000);
        assert.equal(m.msg.type, 3, JSON.stringify(m.msg));
        c.terminate(); // no close frame
        server.rawClients.delete(c);
        await sleep(200);
        const again = await tryRaw(server, query, jwt);
        assert.ok(again.client, `the resume was refused with ${again.status}`);
        const resumed = again.client;
        resumed.sendJson({ type: 9, sequenceId: 2 });
        const first = await resumed.next(5000);
        assert.equal(first.msg.type, 9, `the first message after the resume is a Sequence: ${first.raw}`);
        resumed.sendJson({ type: 7 });
        await resumed.waitClose(5000);
        // The key's only slot is free again.
        const c2 = await eventually(async () => {
            try {
                return await server.connect({ token: jwt });
            } catch {
                return null;
            }
        });
        assert.ok(c2, "a new connection of the key succeeds after the resumed one closed");
        await stop(c2);
    });

    test("a non-stateful connection token reused for a second WebSocket while the first is live gets 409", TEST_OPTS, async () => {
        const { jwt, query } = await negotiated(server);
        const c = await server.rawConnect({ query, token: jwt });
        assert.deepEqual(await c.handshake("json", 1), {});
        const second = await tryRaw(server, query, jwt);
        if (second.client) second.client.terminate();
        assert.equal(second.status, 409, `the second WebSocket ${second.client ? "opened" : `got ${second.status}`}`);
        c.sendJson({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [uid("nsr")] });
        const m = await c.next(5000);
        assert.equal(m.msg.type, 3, JSON.stringify(m.msg));
        assert.equal(m.msg.error, undefined, JSON.stringify(m.msg));
        c.close();
    });
});

describe("hostile token claims", () => {
    for (const exp of ["18446744073709551615", "9223372036854775807"]) {
        test(`exp ${exp}: works or is refused cleanly, no panic; the key's only slot is released after a close`, TEST_OPTS, async (t) => {
            const vkey = freshKey();
            const tok = signRawJwt(`{"sub":"${vkey}","kind":"vkey","exp":${exp},"max_connections":1}`);
            try {
                const neg = await server.negotiate({ headers: bearer(tok) });
                t.diagnostic(`negotiate answered ${neg.status}`);
                assert.ok([200, 401].includes(neg.status), `negotiate answered ${neg.status}: ${neg.text}`);
                if (neg.status === 200) {
                    const c = await server.connect({ token: tok });
                    const taskId = uid("exp");
                    await invoke(c, "SubscribeToTask", taskId);
                    await stop(c);
                    // Again, through skipNegotiation too.
                    const c2 = await eventually(async () => {
                        try {
                            return await server.connect({ token: tok, skipNegotiation: true });
                        } catch {
                            return null;
                        }
                    });
                    assert.ok(c2, "the key's only slot was released: a new connection succeeds");
                    await stop(c2);
                } else {
                    const ws = await server.wsStatus({ query: `access_token=${tok}` });
                    assert.equal(ws.status, 401, "the WebSocket is refused the same way");
                }
                // A well-formed token with max_connections 1 connects: no slot was leaked.
                const plain = signJwt({ sub: vkey, kind: "vkey", exp: nowSecs() + 3600, max_connections: 1 });
                const c3 = await eventually(async () => {
                    try {
                        return await server.connect({ token: plain });
                    } catch {
                        return null;
                    }
                });
                assert.ok(c3, "a normal token of the key connects afterwards");
                await stop(c3);
            } catch (err) {
                assertNoPanic(server); // the real reason, when there is one
                throw err;
            }
            assert.ok(server.alive, "the server is alive");
            assertNoPanic(server);
        });
    }

    test("nbf one hour in the future: 401 on negotiate and on a skipNegotiation WebSocket", TEST_OPTS, async () => {
        const tok = signJwt({ sub: freshKey(), kind: "vkey", exp: nowSecs() + 7200, nbf: nowSecs() + 3600 });
        const neg = await server.negotiate({ headers: bearer(tok) });
        assert.equal(neg.status, 401, `negotiate: ${neg.status} ${neg.text}`);
        assert.equal((await server.wsStatus({ query: `access_token=${tok}` })).status, 401);
    });

    test('numeric "sub": 42 is accepted, and an event for vkey.42 reaches it', TEST_OPTS, async () => {
        const tok = signJwt({ sub: 42, kind: "vkey", exp: nowSecs() + 3600 });
        const c = await server.connect({ token: tok });
        const taskId = uid("num-sub");
        await invoke(c, "SubscribeToTask", taskId);
        const r = record(c, ["TaskProgress"]);
        await server.publish("tasks", "vkey.42.TaskProgress", { taskId, taskType: "num", percentComplete: 42, message: "forty-two" });
        await r.until((l) => l.length >= 1, 5000, "the event for vkey.42");
        assert.deepEqual(r.of("TaskProgress"), [[taskId, 42, "forty-two"]]);
        await stop(c);
    });

    test('auth.audience = hubcast: "aud": ["other","hubcast"] is accepted, ["other"] is 401', TEST_OPTS, async () => {
        const mk = (aud) => signJwt({ sub: freshKey(), kind: "vkey", exp: nowSecs() + 3600, aud });
        const control = await audServer.negotiate({ headers: bearer(mk("hubcast")) });
        assert.equal(control.status, 200, `aud "hubcast": ${control.status} ${control.text}`);
        const both = await audServer.negotiate({ headers: bearer(mk(["other", "hubcast"])) });
        assert.equal(both.status, 200, `aud ["other","hubcast"]: ${both.status} ${both.text}`);
        const other = await audServer.negotiate({ headers: bearer(mk(["other"])) });
        assert.equal(other.status, 401, `aud ["other"]: ${other.status} ${other.text}`);
        assertNoPanic(audServer);
    });
});

describe("limiter and group names", () => {
    test("30 unknown-method invocations at once: after the burst of 20, Rate limit exceeded", TEST_OPTS, async () => {
        const c = await server.rawConnect({ token: await server.mintToken({ vkey: freshKey() }) });
        assert.deepEqual(await c.handshake("json", 1), {});
        const method = "NoSuchMethodAtAll";
        c.send(Array.from({ length: 30 }, (_, i) => json({ type: 1, invocationId: String(i + 1), target: method, arguments: [] })).join(""));
        const errors = [];
        while (errors.length < 30) {
            const m = await c.next(5000);
            if (m.msg.type === 3) errors.push(m.msg.error);
        }
        const limited = HUB_EXCEPTION(method, "Rate limit exceeded. Please try again later.");
        const tail = "HubException: Rate limit exceeded. Please try again later.";
        assert.deepEqual(errors.slice(0, 20), Array(20).fill(NO_SUCH_METHOD(method)), "the burst is answered Method does not exist");
        const rest = errors.slice(20);
        const nLimited = rest.filter((e) => typeof e === "string" && e.endsWith(tail)).length;
        assert.ok(nLimited >= 9, `only ${nLimited} of the last 10 were rate limited: ${JSON.stringify(rest)}`);
        for (const e of rest) assert.ok(e === NO_SUCH_METHOD(method) || e === limited || e.endsWith(tail), e);
        c.close();
    });

    test('SubscribeToTask("type-video") does not receive a TaskProgress of task "other" with taskType "video"', TEST_OPTS, async () => {
        const vkey = freshKey();
        const tok = await server.mintToken({ vkey });
        const a = await server.connect({ token: tok });
        const b = await server.connect({ token: tok });
        await invoke(a, "SubscribeToTask", "type-video");
        await invoke(b, "SubscribeToTaskType", "video");
        const ra = record(a, ["TaskProgress"]);
        const rb = record(b, ["TaskProgress"]);
        await server.publish("tasks", `vkey.${vkey}.TaskProgress`, { taskId: "other", taskType: "video", percentComplete: 3, message: "by type" });
        await rb.until((l) => l.length >= 1, 5000, "the taskType subscriber's event");
        await sleep(1000);
        assert.deepEqual(ra.of("TaskProgress"), [], "the task subscriber of type-video got another task's event");
        // Positive control: the task subscriber gets its own task.
        await server.publish("tasks", `vkey.${vkey}.TaskProgress`, { taskId: "type-video", taskType: "x", percentComplete: 4, message: "own" });
        await ra.until((l) => l.length >= 1, 5000, "the task subscriber's own event");
        assert.deepEqual(ra.of("TaskProgress"), [["type-video", 4, "own"]]);
        await stop(a);
        await stop(b);
    });
});

describe("another key's token on a live connection id", () => {
    test("WebSocket, SSE GET, long-poll GET, POST and DELETE answer 403; the victims keep working", TEST_OPTS, async (t) => {
        const victimKey = freshKey();
        const victimJwt = await server.mintToken({ vkey: victimKey });
        const attackerJwt = await server.mintToken({ vkey: freshKey() });
        const hub = `${server.url}/hubs/tasks`;
        const results = [];
        const check = (what, status) => results.push({ what, status });

        // Victim 1: a raw WebSocket.
        const ws = await negotiated(server, { jwt: victimJwt });
        const wsVictim = await server.rawConnect({ query: ws.query, token: victimJwt });
        assert.deepEqual(await wsVictim.handshake("json", 1), {});
        // Victims 2 and 3: the official client on SSE and on Long Polling.
        const sse = await server.connect({ token: victimJwt, transport: HttpTransportType.ServerSentEvents });
        const lp = await server.connect({ token: victimJwt, transport: HttpTransportType.LongPolling });
        const idOf = (c) => new URL(c.connection.transport._url).searchParams.get("id");
        const sseId = encodeURIComponent(idOf(sse));
        const lpId = encodeURIComponent(idOf(lp));
        const auth = bearer(attackerJwt);

        check("WebSocket GET", (await server.wsStatus({ query: `${ws.query}&access_token=${attackerJwt}` })).status);
        check("SSE GET", await statusOnly(`${hub}?id=${sseId}`, { headers: { ...auth, Accept: "text/event-stream" } }));
        check("long-poll GET", await statusOnly(`${hub}?id=${lpId}&_=${Date.now()}`, { headers: auth }));
        for (const [name, id] of [["WebSocket", ws.query.slice(3)], ["SSE", sseId], ["long-poll", lpId]]) {
            const body = json({ type: 1, target: "SubscribeToTask", arguments: ["hijack"] });
            check(`POST to the ${name} connection`, (await timedFetch(`${hub}?id=${id}`, { method: "POST", headers: auth, body })).status);
            check(`DELETE of the ${name} connection`, (await timedFetch(`${hub}?id=${id}`, { method: "DELETE", headers: auth })).status);
        }
        t.diagnostic(JSON.stringify(results));
        const wrong = results.filter((r) => r.status !== 403);
        assert.deepEqual(wrong, [], "every request with another key's token answers 403");

        // The victims still work: an invocation and an event each.
        const taskId = uid("victim");
        wsVictim.sendJson({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [taskId] });
        const done = await wsVictim.next(5000);
        assert.equal(done.msg.type, 3, JSON.stringify(done.msg));
        assert.equal(done.msg.error, undefined, JSON.stringify(done.msg));
        await invoke(sse, "SubscribeToTask", taskId);
        await invoke(lp, "SubscribeToTask", taskId);
        const rs = record(sse, ["TaskProgress"]);
        const rl = record(lp, ["TaskProgress"]);
        await server.publish("tasks", `vkey.${victimKey}.TaskProgress`, { taskId, taskType: "v", percentComplete: 9, message: "still mine" });
        const ev = await wsVictim.next(5000);
        assert.deepEqual(ev.msg.arguments, [taskId, 9, "still mine"]);
        await rs.until((l) => l.length >= 1, 5000, "the SSE victim's event");
        await rl.until((l) => l.length >= 1, 5000, "the long-poll victim's event");
        assert.equal(sse.state, HubConnectionState.Connected);
        assert.equal(lp.state, HubConnectionState.Connected);
        wsVictim.close();
        await stop(sse);
        await stop(lp);
        assertNoPanic(server);
    });
});
