import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, signJwt, waitFor, waitClosed, uid, MASTER_KEY, HubConnectionState } from "./harness.js";

const server = useServer();

const now = () => Math.floor(Date.now() / 1000);

function assertNegotiated(res, what) {
    assert.equal(res.status, 200, `${what}: status ${res.status} ${res.text}`);
    assert.equal(res.body.error, undefined, `${what}: ${res.text}`);
    assert.equal(typeof res.body.connectionId, "string", `${what}: ${res.text}`);
    assert.equal(typeof res.body.connectionToken, "string", `${what}: ${res.text}`);
}

test("positive control: a minted token negotiates with Authorization: Bearer", async () => {
    const token = await server.mintToken({ vkey: "7" });
    assertNegotiated(await server.negotiate({ headers: { Authorization: `Bearer ${token}` } }), "Bearer");
    // A hand-made token with the same secret and claims works too (validates signJwt below).
    const handMade = signJwt({ sub: "7", kind: "vkey", exp: now() + 600 });
    assertNegotiated(await server.negotiate({ headers: { Authorization: `Bearer ${handMade}` } }), "hand-made");
});

test("no credentials: 401 on negotiate and on the WebSocket GET", async () => {
    const res = await server.negotiate({});
    assert.equal(res.status, 401);
    const ws = await server.wsStatus({});
    assert.equal(ws.status, 401);
});

test("bad signature: 401", async () => {
    const forged = signJwt({ sub: "7", kind: "vkey", exp: now() + 600 }, "some-other-secret-0123456789abcdef0123");
    assert.equal((await server.negotiate({ headers: { Authorization: `Bearer ${forged}` } })).status, 401);
    // A real token with its signature altered.
    const token = await server.mintToken({ vkey: "7" });
    const [h, p, s] = token.split(".");
    const flipped = s[0] === "A" ? "B" + s.slice(1) : "A" + s.slice(1);
    assert.equal((await server.negotiate({ headers: { Authorization: `Bearer ${h}.${p}.${flipped}` } })).status, 401);
    // Garbage.
    assert.equal((await server.negotiate({ headers: { Authorization: "Bearer not-a-jwt" } })).status, 401);
    // And on the WebSocket GET.
    assert.equal((await server.wsStatus({ headers: { Authorization: `Bearer ${forged}` } })).status, 401);
});

test("expired token: 401", async () => {
    const expired = signJwt({ sub: "7", kind: "vkey", exp: now() - 3600 });
    assert.equal((await server.negotiate({ headers: { Authorization: `Bearer ${expired}` } })).status, 401);
    assert.equal((await server.wsStatus({ headers: { Authorization: `Bearer ${expired}` } })).status, 401);
    // Positive control: the same claims with a future exp are accepted.
    const fresh = signJwt({ sub: "7", kind: "vkey", exp: now() + 3600 });
    assertNegotiated(await server.negotiate({ headers: { Authorization: `Bearer ${fresh}` } }), "fresh");
});

test("master key on the tasks hub: 403", async () => {
    assert.equal((await server.negotiate({ headers: { "X-API-Key": MASTER_KEY } })).status, 403);
    assert.equal((await server.negotiate({ headers: { Authorization: `Bearer ${MASTER_KEY}` } })).status, 403);
    assert.equal((await server.wsStatus({ headers: { "X-API-Key": MASTER_KEY } })).status, 403);
    // A wrong master key is no credential at all: 401.
    assert.equal((await server.negotiate({ headers: { "X-API-Key": "wrong-master-key" } })).status, 401);
});

test("token via the access_token query parameter is accepted", async () => {
    const token = await server.mintToken({ vkey: "7" });
    assertNegotiated(await server.negotiate({ query: `access_token=${encodeURIComponent(token)}` }), "access_token");
    // And on the WebSocket GET (skipNegotiation, as a browser would send it).
    const ws = await server.wsStatus({ query: `access_token=${encodeURIComponent(token)}` });
    assert.equal(ws.status, "open");
});

test("token via the X-API-Key header is accepted", async () => {
    const token = await server.mintToken({ vkey: "7" });
    assertNegotiated(await server.negotiate({ headers: { "X-API-Key": token } }), "X-API-Key");
    const ws = await server.wsStatus({ headers: { "X-API-Key": token } });
    assert.equal(ws.status, "open");
});

test("token via the api_key query parameter is accepted", async () => {
    const token = await server.mintToken({ vkey: "7" });
    assertNegotiated(await server.negotiate({ query: `api_key=${encodeURIComponent(token)}` }), "api_key");
});

test("a connected client is closed with 'Token expired' when its token expires", async () => {
    // exp has whole-second precision: a 2 s token minted at any instant after `startedAt` expires
    // at least 1 s after `startedAt`.
    const startedAt = Date.now();
    const token = await server.mintToken({ vkey: "7", ttl: "2s" });
    const c = await server.connect({ token: () => token });
    // Works before expiry.
    const taskId = uid("exp");
    await c.invoke("SubscribeToTask", taskId);
    const got = waitFor(c, "TaskProgress");
    await server.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "t", percentComplete: 1, message: "pre" });
    assert.deepEqual(await got, [taskId, 1, "pre"]);
    assert.equal(c.state, HubConnectionState.Connected);

    const error = await waitClosed(c, 8000);
    const elapsed = Date.now() - startedAt;
    assert.ok(error instanceof Error, `onclose received an Error, got ${error}`);
    assert.match(error.message, /Token expired/);
    assert.ok(elapsed >= 900, `closed ${elapsed} ms after minting a 2 s token: too early`);
    assert.equal(c.state, HubConnectionState.Disconnected);
});

test("token expiry sends exactly {type:7, error:'Token expired', allowReconnect:true} (raw)", async () => {
    const token = await server.mintToken({ vkey: "7", ttl: "2s" });
    const raw = await server.rawConnect({ token });
    assert.deepEqual(await raw.handshake("json", 1), {});
    const messages = await raw.drainUntilClose(8000);
    const closes = messages.filter((m) => m.msg && m.msg.type === 7);
    assert.equal(closes.length, 1, `one Close message, got ${JSON.stringify(messages.map((m) => m.raw))}`);
    assert.deepEqual(closes[0].msg, { type: 7, error: "Token expired", allowReconnect: true });
});
