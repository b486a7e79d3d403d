import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, waitFor, uid, assertVoidCompletion, HubConnectionState } from "./harness.js";

const server = useServer();

function assertVoid(result, what) {
    assert.ok(result === undefined || result === null, `${what} should return void, got ${JSON.stringify(result)}`);
}

async function roundTrip({ protocol, skipNegotiation }) {
    const token = await server.mintToken({ vkey: "7" });
    const c = await server.connect({ token, protocol, skipNegotiation });
    try {
        assert.equal(c.state, HubConnectionState.Connected);
        if (!skipNegotiation) {
            assert.equal(typeof c.connectionId, "string", "negotiated connections expose the connectionId");
            assert.ok(c.connectionId.length > 0);
        }
        const taskId = uid("abc");
        assertVoid(await c.invoke("SubscribeToTask", taskId), "SubscribeToTask");

        let got = waitFor(c, "TaskProgress");
        await server.publish("tasks", "vkey.7.TaskProgress", {
            taskId,
            taskType: "render",
            percentComplete: 50,
            message: "half",
        });
        assert.deepEqual(await got, [taskId, 50, "half"]);

        got = waitFor(c, "TaskProgress");
        await server.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "render", percentComplete: 100 });
        assert.deepEqual(await got, [taskId, 100, null], "an absent optional argument arrives as null");
    } finally {
        await c.stop();
    }
}

test("JSON protocol via negotiate: subscribe and receive TaskProgress", () =>
    roundTrip({ protocol: "json", skipNegotiation: false }));

test("MessagePack protocol via negotiate: subscribe and receive TaskProgress", () =>
    roundTrip({ protocol: "messagepack", skipNegotiation: false }));

test("JSON protocol with skipNegotiation WebSockets", () => roundTrip({ protocol: "json", skipNegotiation: true }));

test("MessagePack protocol with skipNegotiation WebSockets", () =>
    roundTrip({ protocol: "messagepack", skipNegotiation: true }));

test("GET /healthz answers 200", async () => {
    const res = await fetch(`${server.url}/healthz`);
    assert.equal(res.status, 200);
});

function assertWebSocketsOffered(body) {
    assert.ok(Array.isArray(body.availableTransports), "availableTransports is an array");
    const ws = body.availableTransports.find((t) => t.transport === "WebSockets");
    assert.ok(ws, `WebSockets offered: ${JSON.stringify(body.availableTransports)}`);
    assert.ok(ws.transferFormats.includes("Text"), "WebSockets supports Text");
    assert.ok(ws.transferFormats.includes("Binary"), "WebSockets supports Binary");
}

test("negotiate v1 returns connectionId and a different connectionToken", async () => {
    const token = await server.mintToken({ vkey: "7" });
    const { status, body } = await server.negotiate({ version: 1, headers: { Authorization: `Bearer ${token}` } });
    assert.equal(status, 200);
    assert.equal(body.error, undefined, `no error: ${JSON.stringify(body)}`);
    assert.equal(body.negotiateVersion, 1);
    assert.equal(typeof body.connectionId, "string");
    assert.equal(typeof body.connectionToken, "string");
    assert.ok(body.connectionId.length >= 16, `connectionId long enough: ${body.connectionId}`);
    assert.ok(body.connectionToken.length >= 16, `connectionToken long enough: ${body.connectionToken}`);
    assert.notEqual(body.connectionToken, body.connectionId);
    assertWebSocketsOffered(body);

    // A second negotiate yields fresh identifiers.
    const again = await server.negotiate({ version: 1, headers: { Authorization: `Bearer ${token}` } });
    assert.notEqual(again.body.connectionId, body.connectionId);
    assert.notEqual(again.body.connectionToken, body.connectionToken);

    // The token is the WebSocket id.
    const raw = await server.rawConnect({ query: `id=${encodeURIComponent(body.connectionToken)}`, token });
    try {
        assert.deepEqual(await raw.handshake("json", 1), {});
    } finally {
        raw.close();
    }
});

test("negotiate v0 (no negotiateVersion) has a connectionId and no connectionToken", async () => {
    const token = await server.mintToken({ vkey: "7" });
    const { status, body } = await server.negotiate({ version: null, headers: { Authorization: `Bearer ${token}` } });
    assert.equal(status, 200);
    assert.equal(body.error, undefined, `no error: ${JSON.stringify(body)}`);
    assert.equal(typeof body.connectionId, "string");
    assert.ok(body.connectionId.length >= 16);
    assert.equal(body.connectionToken, undefined, `v0 must not carry connectionToken: ${JSON.stringify(body)}`);
    if (body.negotiateVersion !== undefined) assert.equal(body.negotiateVersion, 0);
    assertWebSocketsOffered(body);

    // With v0 the connectionId is the WebSocket id.
    const raw = await server.rawConnect({ query: `id=${encodeURIComponent(body.connectionId)}`, token });
    try {
        assert.deepEqual(await raw.handshake("json", 1), {});
        raw.sendJson({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [uid("v0")] });
        assertVoidCompletion((await raw.next()).msg, "1");
    } finally {
        raw.close();
    }
});

test("WebSocket with an unknown id answers 404", async () => {
    const token = await server.mintToken({ vkey: "7" });
    const headers = { Authorization: `Bearer ${token}` };
    const { status } = await server.wsStatus({ query: "id=no-such-connection-0123456789", headers });
    assert.equal(status, 404);

    // The public connectionId of a v1 negotiation is not the key of the connection: 404 too.
    const neg = await server.negotiate({ version: 1, headers });
    assert.equal(neg.status, 200);
    const byId = await server.wsStatus({ query: `id=${encodeURIComponent(neg.body.connectionId)}`, headers });
    assert.equal(byId.status, 404);
    // Positive control: the token of the same negotiation opens.
    const byToken = await server.wsStatus({ query: `id=${encodeURIComponent(neg.body.connectionToken)}`, headers });
    assert.equal(byToken.status, "open");
});

test("a second WebSocket on the same connection token answers 409", async () => {
    const token = await server.mintToken({ vkey: "7" });
    const headers = { Authorization: `Bearer ${token}` };
    const neg = await server.negotiate({ version: 1, headers });
    assert.equal(neg.status, 200);
    const query = `id=${encodeURIComponent(neg.body.connectionToken)}`;

    const first = await server.rawConnect({ query, token });
    try {
        assert.deepEqual(await first.handshake("json", 1), {});
        const second = await server.wsStatus({ query, headers });
        assert.equal(second.status, 409);

        // The first socket is unaffected.
        first.sendJson({ type: 1, invocationId: "1", target: "SubscribeToTask", arguments: [uid("first")] });
        assertVoidCompletion((await first.next()).msg, "1");
        assert.equal(first.closeInfo, null);
    } finally {
        first.close();
    }
});
