// Protocol-level tests with a raw `ws` client.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import crypto from "node:crypto";
import { once } from "node:events";
import { useServer, assertVoidCompletion, waitClosed, uid, sleep, withTimeout, RS } from "./harness.js";

const server = useServer();

const PROTOCOL_ERROR = "Connection closed with an error.";
const HANDSHAKE_TIMEOUT_MS = 2000;

let token;
async function raw() {
    token ??= await server.mintToken({ vkey: "7" });
    return server.rawConnect({ token });
}

async function rawJson() {
    const c = await raw();
    assert.deepEqual(await c.handshake("json", 1), {});
    return c;
}

/** Waits for the socket to close and returns the Close hub messages (type 7) received before. */
async function closeMessages(c, ms = 5000) {
    const messages = await c.drainUntilClose(ms);
    return messages.filter((m) => m.msg && m.msg.type === 7).map((m) => m.msg);
}

/**
 * Asserts that `c` got exactly one SignalR Close with the generic protocol error, then a WebSocket close with
 * `wsCode` when one is given, and that the server still serves others.
 */
async function assertProtocolErrorClose(c, wsCode, why) {
    const closes = await closeMessages(c);
    assert.equal(closes.length, 1, "one Close message");
    assert.equal(closes[0].error, PROTOCOL_ERROR);
    if (wsCode !== undefined) assert.equal(c.closeInfo.code, wsCode, why);
    await server.assertServes();
}

const invocation = (id, target, args) => JSON.stringify({ type: 1, invocationId: id, target, arguments: args }) + RS;

describe("handshake", () => {
    test("unknown protocol is refused with the exact error, then closed", async () => {
        const c = await raw();
        c.send('{"protocol":"foo","version":1}' + RS);
        const reply = await c.next(3000);
        assert.equal(reply.raw, `{"error":"The protocol 'foo' is not supported."}`);
        assert.equal(c.frames[0].data.toString("utf8"), `{"error":"The protocol 'foo' is not supported."}${RS}`);
        await c.waitClose(3000);
        await server.assertServes();
    });

    test("unsupported version is refused, then closed", async () => {
        const c = await raw();
        c.send('{"protocol":"json","version":99}' + RS);
        const reply = await c.next(3000);
        assert.ok(reply.handshake);
        assert.deepEqual(reply.msg, { error: "The server does not support version 99 of the 'json' protocol." });
        await c.waitClose(3000);
        await server.assertServes();
    });

    test("positive control: json and messagepack handshakes succeed with {}", async () => {
        const c = await raw();
        c.send('{"protocol":"json","version":1}' + RS);
        const reply = await c.next(3000);
        assert.equal(reply.raw, "{}");
        c.close();
        const m = await raw();
        assert.deepEqual(await m.handshake("messagepack", 1), {});
        assert.equal(m.frames[0].isBinary, true, "messagepack handshake reply comes in a binary frame");
        m.close();
    });

    test("handshake split across two frames", async () => {
        const c = await raw();
        c.send('{"protocol":"js');
        await sleep(100);
        c.send('on","version":1}' + RS);
        const reply = await c.next(3000);
        assert.deepEqual(reply.msg, {});
        c.send(invocation("1", "SubscribeToTask", [uid("hs-split")]));
        assertVoidCompletion((await c.next()).msg, "1");
        c.close();
    });

    test("handshake and an invocation in the same frame", async () => {
        const c = await raw();
        c.send('{"protocol":"json","version":1}' + RS + invocation("1", "SubscribeToTask", [uid("hs-same")]));
        assert.deepEqual((await c.next(3000)).msg, {});
        assertVoidCompletion((await c.next()).msg, "1");
        c.close();
    });

    test("garbage instead of a handshake closes the socket promptly", async () => {
        for (const garbage of ["hello, this is not a handshake" + RS, Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x1e])]) {
            const c = await raw();
            const sent = Date.now();
            c.send(garbage);
            const messages = await c.drainUntilClose(HANDSHAKE_TIMEOUT_MS - 500);
            assert.ok(Date.now() - sent < HANDSHAKE_TIMEOUT_MS, "closed before the handshake timeout");
            for (const m of messages) {
                assert.ok(m.msg && typeof m.msg.error === "string", `only a handshake error may be sent, got ${m.raw}`);
            }
        }
        await server.assertServes();
    });

    test("garbage before a valid handshake closes the socket", async () => {
        const c = await raw();
        c.send('xyz{"protocol":"json","version":1}' + RS);
        const messages = await c.drainUntilClose(HANDSHAKE_TIMEOUT_MS - 500);
        for (const m of messages) {
            assert.ok(m.msg && typeof m.msg.error === "string", `only a handshake error may be sent, got ${m.raw}`);
        }
        await server.assertServes();
    });

    test("a handshake that never comes: closed after the handshake timeout", async () => {
        const silent = await raw();
        const partial = await raw();
        const opened = Date.now();
        partial.send('{"protocol":"json",'); // never completed
        await sleep(HANDSHAKE_TIMEOUT_MS - 800);
        assert.equal(silent.closeInfo, null, "closed before the handshake timeout");
        assert.equal(partial.closeInfo, null, "closed before the handshake timeout");
        await silent.waitClose(4000);
        await partial.waitClose(4000);
        const elapsed = Date.now() - opened;
        assert.ok(elapsed < HANDSHAKE_TIMEOUT_MS + 2500, `closed after ${elapsed} ms`);
        for (const c of [silent, partial]) {
            for (const m of c.queue) {
                assert.ok(m.msg && typeof m.msg.error === "string", `only a handshake error may be sent, got ${m.raw}`);
            }
        }
        await server.assertServes();
    });
});

describe("keep-alive", () => {
    test("an idle JSON connection receives {\"type\":6} within 2.5 s", async () => {
        const c = await rawJson();
        const start = Date.now();
        const ping = await c.next(2500, { keepPings: true });
        assert.equal(ping.raw, '{"type":6}');
        const frame = c.frames.find((f) => f.data.toString("utf8").includes('{"type":6}'));
        assert.equal(frame.data.toString("utf8"), '{"type":6}' + RS);
        assert.ok(Date.now() - start <= 2500);
        // And again: pings are periodic.
        const ping2 = await c.next(2500, { keepPings: true });
        assert.equal(ping2.raw, '{"type":6}');
        c.close();
    });

    test("after idle pings, events still flow (pings do not count against the outbound buffer)", async () => {
        // Regression: the writer once credited keep-alive pings back to the byte-bounded queue, so after
        // a few idle pings the next event overflowed the counter.
        const c = await rawJson();
        c.send(invocation("1", "SubscribeToTask", ["after-pings"]));
        assertVoidCompletion((await c.next()).msg, "1");
        await c.next(2500, { keepPings: true });
        await c.next(2500, { keepPings: true });
        for (let i = 0; i < 3; i++) {
            await server.publish("tasks", "vkey.7.TaskProgress", {
                taskId: "after-pings",
                taskType: "t",
                percentComplete: i,
            });
            const event = await c.next(2500);
            assert.deepEqual(event.msg.arguments, ["after-pings", i, null]);
        }
        c.close();
        await server.assertServes();
    });

    test("an idle MessagePack connection receives a Ping (02 91 06) within 2.5 s", async () => {
        const c = await raw();
        assert.deepEqual(await c.handshake("messagepack", 1), {});
        const ping = await c.next(2500, { keepPings: true });
        assert.deepEqual(ping.msg, { type: 6 });
        assert.equal(ping.raw.toString("hex"), "029106");
        c.close();
    });
});

describe("bad input after the handshake", () => {
    test("oversized message (40 000 chars) closes with 'Connection closed with an error.'", async () => {
        // Positive control: a message under the limit is processed (and refused by the hub).
        const ok = await rawJson();
        ok.send(invocation("1", "SubscribeToTask", ["x".repeat(30_000)]));
        const reply = await ok.next();
        assert.equal(reply.msg.type, 3);
        assert.equal(reply.msg.invocationId, "1");
        assert.equal(
            reply.msg.error,
            "An unexpected error occurred invoking 'SubscribeToTask' on the server. HubException: Invalid task ID",
        );
        assert.equal(ok.closeInfo, null);
        ok.close();

        const c = await rawJson();
        c.send(invocation("1", "SubscribeToTask", ["x".repeat(40_000)]));
        await assertProtocolErrorClose(c, 1000, "a SignalR-level refusal is a normal WebSocket close");
    });

    test("oversized message via the JS client: onclose error mentions 'Connection closed with an error.'", async () => {
        const token = await server.mintToken({ vkey: "7" });
        const c = await server.connect({ token });
        const pending = c.invoke("SubscribeToTask", "y".repeat(40_000)).then(
            () => "resolved",
            (e) => e,
        );
        const error = await waitClosed(c, 5000);
        assert.ok(error instanceof Error, `onclose got an Error, got ${error}`);
        assert.ok(error.message.includes(PROTOCOL_ERROR), error.message);
        assert.notEqual(await pending, "resolved");
        await server.assertServes();
    });

    test("oversized message split over many frames closes too", async () => {
        const c = await rawJson();
        const msg = invocation("1", "SubscribeToTask", ["z".repeat(40_000)]);
        for (let i = 0; i < msg.length; i += 8000) c.send(msg.slice(i, i + 8000));
        await assertProtocolErrorClose(c);
    });

    for (const [name, bad] of [
        ["truncated JSON", '{"type":1,"target":' + RS],
        ["not JSON at all", "this is not json" + RS],
        ["invocation without a target", '{"type":1,"invocationId":"1","arguments":[]}' + RS],
    ]) {
        test(`malformed JSON (${name}) closes with 'Connection closed with an error.'`, async () => {
            const c = await rawJson();
            c.send(bad);
            await assertProtocolErrorClose(c);
        });
    }

    for (const [name, bytes] of [
        ["reserved byte 0xc1", [0x05, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1]],
        ["not an array", [0x02, 0xa1, 0x78]],
        ["invocation with a non-string target", [0x08, 0x96, 0x01, 0x80, 0xa1, 0x31, 0x2a, 0x90, 0x90]],
    ]) {
        test(`invalid MessagePack (${name}) closes the connection`, async () => {
            const c = await raw();
            assert.deepEqual(await c.handshake("messagepack", 1), {});
            c.send(Buffer.from(bytes));
            await c.waitClose(5000);
            for (const m of c.queue) {
                if (m.msg && m.msg.type === 7) assert.equal(m.msg.error, PROTOCOL_ERROR);
            }
            await server.assertServes({ protocol: "messagepack" });
        });
    }
});

describe("framing", () => {
    test("several JSON messages in one frame: two completions", async () => {
        const c = await rawJson();
        c.send(invocation("1", "SubscribeToTask", [uid("multi")]) + invocation("2", "SubscribeToTaskType", [uid("multi")]));
        const a = (await c.next()).msg;
        const b = (await c.next()).msg;
        assertVoidCompletion(a, "1");
        assertVoidCompletion(b, "2");
        c.close();
    });

    test("one JSON message split across two frames", async () => {
        const c = await rawJson();
        const taskId = uid("split");
        const msg = invocation("1", "SubscribeToTask", [taskId]);
        const cut = Math.floor(msg.length / 2);
        c.send(msg.slice(0, cut));
        await sleep(100);
        c.send(msg.slice(cut));
        assertVoidCompletion((await c.next()).msg, "1");
        // The subscription made by the split invocation is effective.
        await server.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "t", percentComplete: 3, message: "s" });
        const ev = (await c.next()).msg;
        assert.equal(ev.type, 1);
        assert.equal(ev.target, "TaskProgress");
        assert.deepEqual(ev.arguments, [taskId, 3, "s"]);
        c.close();
    });

    test("a JSON frame ending in the middle of the second message", async () => {
        const c = await rawJson();
        const first = invocation("1", "SubscribeToTask", [uid("mid")]);
        const second = invocation("2", "SubscribeToTask", [uid("mid")]);
        c.send(first + second.slice(0, 10));
        assertVoidCompletion((await c.next()).msg, "1");
        c.send(second.slice(10));
        assertVoidCompletion((await c.next()).msg, "2");
        c.close();
    });

    test("several MessagePack messages in one frame, and one split across frames", async () => {
        const c = await raw();
        assert.deepEqual(await c.handshake("messagepack", 1), {});
        const { MessagePackHubProtocol } = await import("@microsoft/signalr-protocol-msgpack");
        const p = new MessagePackHubProtocol();
        const enc = (id, arg) =>
            Buffer.from(
                p.writeMessage({ type: 1, headers: {}, invocationId: id, target: "SubscribeToTask", arguments: [arg], streamIds: [] }),
            );
        c.send(Buffer.concat([enc("1", uid("mp")), enc("2", uid("mp"))]));
        assertVoidCompletion((await c.next()).msg, "1");
        assertVoidCompletion((await c.next()).msg, "2");
        const third = enc("3", uid("mp"));
        c.send(third.subarray(0, 5));
        await sleep(100);
        c.send(third.subarray(5));
        assertVoidCompletion((await c.next()).msg, "3");
        c.close();
    });
});

// hubcast frames WebSockets itself (src/transport/websocket): the RFC 6455 cases a library would handle.
describe("WebSocket framing", () => {
    test("a Ping is answered with a Pong carrying its payload, and the connection carries on", async () => {
        const c = await rawJson();
        const pong = new Promise((resolve) => c.ws.once("pong", resolve));
        c.ws.ping(Buffer.from("are you there?"));
        const payload = await withTimeout(pong, 3000, "waiting for the Pong");
        assert.equal(payload.toString(), "are you there?");
        c.send(invocation("1", "SubscribeToTask", [uid("ping")]));
        assertVoidCompletion((await c.next()).msg, "1");
        c.close();
    });

    test("a message sent in fragments, with a Ping between them, is reassembled", async () => {
        const c = await rawJson();
        const message = invocation("1", "SubscribeToTask", [uid("fragments")]);
        c.ws.send(message.slice(0, 10), { fin: false });
        c.ws.ping();
        c.ws.send(message.slice(10, 30), { fin: false });
        c.ws.send(message.slice(30), { fin: true });
        assertVoidCompletion((await c.next()).msg, "1");
        assert.equal(c.closeInfo, null);
        c.close();
    });

    test("invalid UTF-8 in a text frame closes with 'Connection closed with an error.' and status 1007", async () => {
        const c = await rawJson();
        c.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d, 0x1e]), { binary: false });
        await assertProtocolErrorClose(c, 1007, "the WebSocket status says the payload was invalid");
    });

    test("a WebSocket message over the socket limit is refused by the framing with status 1009", async () => {
        const c = await rawJson();
        // 1 MiB, over the socket's limit (4 × the 32 KiB message limit); a message the session refuses
        // instead closes with 1000, so the status tells which layer refused it.
        c.ws.send(Buffer.alloc(1024 * 1024, 0x61), { binary: false });
        await assertProtocolErrorClose(c, 1009, "the framing refused it from its header");
    });

    test("raw socket: the upgrade answers the RFC's accept key, and an unmasked client frame is refused", async () => {
        token ??= await server.mintToken({ vkey: "7" });
        const socket = net.connect(server.port, "127.0.0.1");
        await once(socket, "connect");
        let received = Buffer.alloc(0);
        socket.on("data", (chunk) => (received = Buffer.concat([received, chunk])));
        const ended = new Promise((resolve) => socket.on("close", resolve));
        const key = crypto.randomBytes(16).toString("base64");
        socket.write(
            `GET /hubs/tasks?access_token=${token} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n` +
                `Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n\r\n`,
        );
        const deadline = Date.now() + 3000;
        while (!received.includes("\r\n\r\n") && Date.now() < deadline) await sleep(20);
        const head = received.toString("latin1").split("\r\n\r\n")[0];
        assert.match(head, /^HTTP\/1\.1 101 /);
        const expected = crypto
            .createHash("sha1")
            .update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
            .digest("base64");
        assert.ok(head.toLowerCase().includes(`sec-websocket-accept: ${expected.toLowerCase()}`), head);
        // An unmasked text frame carrying a handshake: RFC 6455 says the server must close.
        const handshake = Buffer.from('{"protocol":"json","version":1}\x1e');
        socket.write(Buffer.concat([Buffer.from([0x81, handshake.length]), handshake]));
        await withTimeout(ended, 3000, "waiting for the server to close the socket");
        const afterHead = received.subarray(received.indexOf("\r\n\r\n") + 4);
        assert.ok(!afterHead.includes(Buffer.from("{}\x1e")), "the handshake in an unmasked frame was not answered");
        // The server's Close frame (unmasked, 2-byte payload) carries 1002, protocol error.
        assert.deepEqual([...afterHead], [0x88, 0x02, 0x03, 0xea]);
        await server.assertServes();
    });
});
