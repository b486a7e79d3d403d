// Hostile clients at the WebSocket and hub-protocol layer: a Pong flood from a client that stops reading,
// malformed framing, oversized and pathological hub messages. Every test talks to 127.0.0.1 only, is
// bounded in count and time, and checks that the server survives (no panic) and keeps serving others.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { useServer, uid, sleep, RS } from "./harness.js";
import {
    freshKey,
    bearer,
    trackPanics,
    assertNoPanic,
    sampleRss,
    rssMb,
    rawHttp,
    rawUpgrade,
    rawWsJson,
    waitUpgradeClosed,
    wsFrame,
    EMPTY_PING,
    closedByServer,
    waitServerClose,
    tcpQueues,
    startBystander,
} from "./hostile-helpers.js";

// Nothing may hang: every test is bounded.
const TEST_OPTS = { timeout: 30000 };

const WRITE_TIMEOUT_S = 2;
const HANDSHAKE_TIMEOUT_S = 2; // DEFAULT_ENV of the harness
const server = useServer({
    HUBCAST_LIMITS__OUTBOUND_BUFFER_BYTES: String(256 * 1024),
    HUBCAST_LIMITS__WRITE_TIMEOUT: `${WRITE_TIMEOUT_S}s`,
});
trackPanics(server);
// A short client timeout, for a message that never completes after the handshake.
const CLIENT_TIMEOUT_S = 2;
const shortTimeoutServer = useServer({ HUBCAST_SIGNALR__CLIENT_TIMEOUT: `${CLIENT_TIMEOUT_S}s` });
trackPanics(shortTimeoutServer);

async function tokenFor(srv, vkey = freshKey()) {
    return srv.mintToken({ vkey });
}

async function wsPath(srv, hub = "tasks") {
    return `/hubs/${hub}?access_token=${await tokenFor(srv)}`;
}

const invocation = (id, target, args) => JSON.stringify({ type: 1, invocationId: id, target, arguments: args }) + RS;

/** Asserts the socket is closed within `ms` and returns its close code (null: closed without a Close frame). */
async function closedWithin(up, ms, what) {
    try {
        return (await waitUpgradeClosed(up, ms)).code;
    } catch {
        up.socket.destroy();
        assert.fail(`${what}: the server did not close the socket within ${ms} ms`);
    }
}

describe("pong flood from a client that stops reading", () => {
    test("the connection is closed as a slow consumer, RSS grows < 100 MB, a bystander keeps receiving events", TEST_OPTS, async (t) => {
        const pid = server.child.pid;
        const bystander = await startBystander(server);
        const rss = sampleRss(pid, 50);
        const up = await rawWsJson(server.port, await wsPath(server));
        const socket = up.socket;
        socket.pause(); // the attacker never reads again
        const attackStart = Date.now();
        let writeError = null;
        socket.on("error", (err) => (writeError = err));
        const stillOpen = () => !writeError && !socket.destroyed && !closedByServer(server.port, socket);

        /**
         * Writes and waits for room in the socket (bounded by `deadline`); false when the attack must stop.
         * Yields to the event loop on every call, so the bystander, the RSS sampler and I/O keep running.
         */
        let writes = 0;
        async function push(buf, deadline) {
            writes += 1;
            if (writeError || socket.destroyed) return false;
            if (writes % 64 === 0 && closedByServer(server.port, socket)) return false;
            const room = socket.write(buf);
            await new Promise((r) => setImmediate(r));
            if (!room) {
                while (socket.writableLength > 1 << 20) {
                    if (Date.now() > deadline || !stillOpen()) return false;
                    await Promise.race([new Promise((r) => socket.once("drain", r)), sleep(50)]);
                }
            }
            return true;
        }

        // 1. Invocations whose Completions queue up: an unknown method with a 4 KB name, echoed in each
        //    Completion's error, until the kernel's buffers between server and attacker are full (the
        //    server's unsent bytes stop growing): from then on nothing the server queues for this client,
        //    Pongs included, can be written. Stop right there: far more would get the attacker closed as
        //    a slow consumer by the Completions alone, or stall the server's reading, and the ping flood
        //    would test nothing.
        const name = "X".repeat(4000);
        const frame = wsFrame(0x1, invocation("1", name, []));
        let invocations = 0;
        const invokeDeadline = Date.now() + 8000;
        // The server's send buffer is full at about tcp_wmem's maximum (4 MiB by default).
        let wmemMax = 4 * 1024 * 1024;
        try {
            wmemMax = Number(fs.readFileSync("/proc/sys/net/ipv4/tcp_wmem", "utf8").trim().split(/\s+/)[2]) || wmemMax;
        } catch {
            /* keep the default */
        }
        let last = -1;
        let flat = 0;
        for (;;) {
            const q = tcpQueues(server.port, socket.localPort);
            if (!q || invocations >= 4000 || Date.now() > invokeDeadline) break;
            flat = q.serverTx > 0 && q.serverTx === last ? flat + 1 : 0;
            last = q.serverTx;
            if (flat >= 1 && q.serverTx >= 0.9 * wmemMax) break; // full
            if (flat >= 25) break; // stuck below the expected size for a second: full on this machine
            const step = q.serverTx < 0.75 * wmemMax ? 25 : 4;
            for (let i = 0; i < step && (await push(frame, invokeDeadline)); i++) invocations += 1;
            await sleep(40);
        }
        const filled = tcpQueues(server.port, socket.localPort);

        // 2. The ping flood: empty masked Pings, 60 KB at a time, up to 5 million of them or 5 s.
        const chunk = Buffer.concat(Array.from({ length: 10_000 }, () => EMPTY_PING));
        let pings = 0;
        const floodStart = Date.now();
        const floodDeadline = floodStart + 5000;
        while (pings < 5_000_000 && Date.now() < floodDeadline && (await push(chunk, floodDeadline))) pings += 10_000;
        const floodEnd = Date.now();
        const afterFlood = tcpQueues(server.port, socket.localPort);

        // 3. The server must close the attacker (the stalled write times out at the latest).
        const closeWithinS = WRITE_TIMEOUT_S + 8;
        const closedAt = await waitServerClose(server.port, socket, closeWithinS * 1000);
        // Watch the bystander for at least 2 s after the attack started.
        await sleep(Math.max(0, attackStart + 2000 - Date.now()));
        rss.stop();
        const stats = await bystander.stop();
        socket.destroy();
        const summary =
            `${invocations} invocations (then kernel queues ${JSON.stringify(filled)}), ${pings} pings in ${floodEnd - floodStart} ms ` +
            `(then ${JSON.stringify(afterFlood)}); ` +
            `RSS ${rss.baseline.toFixed(0)} -> max ${rss.max.toFixed(0)} MB; bystander ${stats.received}/${stats.published}`;
        t.diagnostic(summary + `; closed ${closedAt === null ? "never" : closedAt - floodEnd + " ms after the flood"}`);
        assert.ok(server.alive, `the server died (${summary})\n${server.stderrTail()}`);
        assert.ok(closedAt !== null, `the attacker's connection is still open ${closeWithinS} s after the flood (${summary})`);
        assert.ok(rss.max - rss.baseline < 100, `RSS grew by ${(rss.max - rss.baseline).toFixed(0)} MB (${summary})`);
        // The bystander kept receiving during the attack: events published while it ran arrived.
        const during = bystander.received.filter((r) => r.at >= attackStart).length;
        assert.ok(during >= 3, `the bystander received ${during} events during the attack (${summary})`);
        await bystander.check();
        await bystander.close();
        assertNoPanic(server);
    });
});

describe("malformed HTTP and WebSocket framing", () => {
    test("garbage bytes before the HTTP request: 400 or a close, and the server stays healthy", TEST_OPTS, async () => {
        const garbage = Buffer.concat([
            Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x00, 0xff, 0x13]),
            Buffer.from("\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ]);
        const r = await rawHttp(server.port, garbage, { ms: 3000 });
        assert.ok(r.status === 400 || (r.status === null && r.closed), `answered ${r.status} (closed ${r.closed}) in ${r.ms} ms: ${r.text.slice(0, 200)}`);
        await server.assertServes({ vkey: freshKey() });
        assertNoPanic(server);
    });

    test("a WebSocket upgraded with a valid token that never sends the handshake is closed after the handshake timeout", TEST_OPTS, async () => {
        const token = await tokenFor(server);
        const up = await rawUpgrade(server.port, "/hubs/tasks", { headers: bearer(token) });
        assert.equal(up.status, 101, up.head);
        const started = Date.now();
        await closedWithin(up, (HANDSHAKE_TIMEOUT_S + 2) * 1000, "no handshake");
        assert.ok(Date.now() - started >= (HANDSHAKE_TIMEOUT_S - 0.5) * 1000, `closed after only ${Date.now() - started} ms`);
    });

    test("non-frame bytes after the upgrade: closed (1002 or a TCP close)", TEST_OPTS, async () => {
        const up = await rawUpgrade(server.port, await wsPath(server));
        assert.equal(up.status, 101, up.head);
        up.socket.write("this is not a websocket frame at all\r\n\r\n");
        const code = await closedWithin(up, 3000, "garbage frames");
        assert.ok(code === null || code === 1002, `close code ${code}`);
        assertNoPanic(server);
    });

    test("a text frame with invalid UTF-8 closes with 1007", TEST_OPTS, async () => {
        const up = await rawWsJson(server.port, await wsPath(server));
        up.socket.write(wsFrame(0x1, Buffer.from([0x7b, 0xff, 0xfe, 0x7d, 0x1e])));
        assert.equal(await closedWithin(up, 3000, "invalid UTF-8"), 1007);
    });

    test("an unmasked client frame closes with 1002", TEST_OPTS, async () => {
        const up = await rawUpgrade(server.port, await wsPath(server));
        up.socket.write(wsFrame(0x1, '{"protocol":"json","version":1}' + RS, { mask: false }));
        assert.equal(await closedWithin(up, 3000, "unmasked frame"), 1002);
        assert.ok(!up.body().includes(Buffer.from("{}" + RS)), "the unmasked handshake was not answered");
    });

    test("a frame header declaring 2^63-1 bytes closes with 1009 or 1002, without memory growth", TEST_OPTS, async () => {
        const pid = server.child.pid;
        const before = rssMb(pid);
        const up = await rawWsJson(server.port, await wsPath(server));
        const header = wsFrame(0x2, Buffer.alloc(0), { len: 2n ** 63n - 1n, mask: false });
        header[1] |= 0x80; // masked, with a key following
        up.socket.write(Buffer.concat([header, Buffer.from([1, 2, 3, 4])]));
        // Then 64 KB of payload, and nothing more: the server must refuse the frame from its header, not
        // wait for (or buffer) the rest. (More would race the server's Close frame against a TCP reset.)
        up.socket.write(Buffer.alloc(64 * 1024, 0x61));
        const code = await closedWithin(up, 3000, "2^63-1 length");
        assert.ok(code === 1009 || code === 1002, `close code ${code}`);
        const grown = rssMb(pid) - before;
        assert.ok(grown < 50, `RSS grew by ${grown.toFixed(0)} MB`);
        assertNoPanic(server);
    });

    test("an unfinished fragmented handshake (no FIN, then pings) is closed by the handshake timeout", TEST_OPTS, async () => {
        const up = await rawUpgrade(server.port, await wsPath(server));
        assert.equal(up.status, 101, up.head);
        up.socket.write(wsFrame(0x1, '{"protocol":"js', { fin: false }));
        const pinger = setInterval(() => up.socket.writable && up.socket.write(EMPTY_PING), 300);
        try {
            await closedWithin(up, (HANDSHAKE_TIMEOUT_S + 2) * 1000, "unfinished fragmented handshake");
        } finally {
            clearInterval(pinger);
        }
        assert.ok(!up.body().includes(Buffer.from("{}" + RS)), "no handshake reply");
    });

    test("an unfinished fragmented message after the handshake (then pings) is closed by the client timeout", TEST_OPTS, async () => {
        const up = await rawWsJson(shortTimeoutServer.port, await wsPath(shortTimeoutServer));
        up.socket.write(wsFrame(0x1, invocation("1", "SubscribeToTask", [uid("frag")]).slice(0, 20), { fin: false }));
        const pinger = setInterval(() => up.socket.writable && up.socket.write(EMPTY_PING), 300);
        try {
            await closedWithin(up, (CLIENT_TIMEOUT_S + 2) * 1000, "unfinished fragmented message");
        } finally {
            clearInterval(pinger);
        }
        assertNoPanic(shortTimeoutServer);
    });

    test("endless continuation frames without FIN: closed promptly, memory bounded", TEST_OPTS, async () => {
        const pid = server.child.pid;
        const before = rssMb(pid);
        const up = await rawWsJson(server.port, await wsPath(server));
        up.socket.write(wsFrame(0x1, "[", { fin: false }));
        const piece = wsFrame(0x0, Buffer.alloc(16 * 1024, 0x20), { fin: false });
        for (let i = 0; i < 1024 && !up.socket.closedAt && !up.socket.destroyed; i++) {
            // up to 16 MB in fragments
            if (!up.socket.write(piece)) await Promise.race([new Promise((r) => up.socket.once("drain", r)), sleep(100)]);
        }
        await closedWithin(up, 3000, "continuation flood");
        const grown = rssMb(pid) - before;
        assert.ok(grown < 50, `RSS grew by ${grown.toFixed(0)} MB`);
        assertNoPanic(server);
    });
});

describe("pathological hub messages", () => {
    /** After `message`, the socket is closed or the invocation "1" gets an error Completion. */
    async function closedOrErrorCompletion(up, ms = 3000) {
        const deadline = Date.now() + ms;
        for (;;) {
            const text = Buffer.concat(up.frames().map((f) => f.payload)).toString("utf8");
            for (const rec of text.split(RS)) {
                if (!rec.startsWith("{")) continue;
                let msg;
                try {
                    msg = JSON.parse(rec);
                } catch {
                    continue;
                }
                if (msg.type === 3 && msg.invocationId === "1") return { completion: msg };
            }
            if (up.socket.closedAt) return { closed: true };
            if (Date.now() > deadline) return { timeout: true, text };
            await sleep(20);
        }
    }

    test("deeply nested JSON arguments (16 000 levels, under the size limit): a clean error or close, no crash", TEST_OPTS, async () => {
        const up = await rawWsJson(server.port, await wsPath(server));
        const depth = 16_000;
        const msg = `{"type":1,"invocationId":"1","target":"SubscribeToTask","arguments":[${"[".repeat(depth)}${"]".repeat(depth)}]}` + RS;
        assert.ok(msg.length < 32768);
        up.socket.write(wsFrame(0x1, msg));
        const r = await closedOrErrorCompletion(up);
        assert.ok(!r.timeout, `neither a Completion nor a close: ${String(JSON.stringify(r.text ?? "")).slice(0, 300)}`);
        if (r.completion) assert.equal(typeof r.completion.error, "string", JSON.stringify(r.completion));
        up.socket.destroy();
        assert.ok(server.alive, `the server died\n${server.stderrTail()}`);
        await server.assertServes({ vkey: freshKey() });
        assertNoPanic(server);
    });

    test("32 000 unclosed '[' in an invocation: a clean error or close, no crash", TEST_OPTS, async () => {
        const up = await rawWsJson(server.port, await wsPath(server));
        const msg = `{"type":1,"invocationId":"1","target":"SubscribeToTask","arguments":${"[".repeat(32_000)}` + RS;
        up.socket.write(wsFrame(0x1, msg));
        const r = await closedOrErrorCompletion(up);
        assert.ok(!r.timeout, `neither a Completion nor a close: ${String(JSON.stringify(r.text ?? "")).slice(0, 300)}`);
        up.socket.destroy();
        await server.assertServes({ vkey: freshKey() });
        assertNoPanic(server);
    });

    test("deeply nested MessagePack arguments (30 000 levels): a clean error or close, no crash", TEST_OPTS, async () => {
        const c = await server.rawConnect({ token: await tokenFor(server) });
        assert.deepEqual(await c.handshake("messagepack", 1), {});
        const target = Buffer.from("SubscribeToTask");
        const body = Buffer.concat([
            Buffer.from([0x96, 0x01, 0x80, 0xa1, 0x31, 0xa0 | target.length]),
            target,
            Buffer.alloc(30_000, 0x91),
            Buffer.from([0xc0, 0x90]),
        ]);
        const len = body.length;
        const prefix = [];
        let n = len;
        do {
            let b = n & 0x7f;
            n >>>= 7;
            if (n) b |= 0x80;
            prefix.push(b);
        } while (n);
        c.send(Buffer.concat([Buffer.from(prefix), body]));
        let outcome;
        try {
            const m = await c.next(3000);
            outcome = m.msg;
        } catch (err) {
            outcome = err.closed ? "closed" : err.message;
        }
        assert.ok(
            outcome === "closed" || (outcome && (outcome.type === 7 || (outcome.type === 3 && outcome.error))),
            `neither a clean error nor a close: ${JSON.stringify(outcome)}`,
        );
        c.terminate();
        await server.assertServes({ vkey: freshKey() });
        assertNoPanic(server);
    });

    test("an invocation with 10 000 arguments: an error Completion or a close", TEST_OPTS, async () => {
        const up = await rawWsJson(server.port, await wsPath(server));
        up.socket.write(wsFrame(0x1, invocation("1", "SubscribeToTask", Array(10_000).fill(1))));
        const r = await closedOrErrorCompletion(up);
        assert.ok(!r.timeout, `neither a Completion nor a close: ${String(JSON.stringify(r.text ?? "")).slice(0, 300)}`);
        if (r.completion) assert.equal(typeof r.completion.error, "string", JSON.stringify(r.completion));
        up.socket.destroy();
        await server.assertServes({ vkey: freshKey() });
    });

    test("a 40 KB handshake (over the 32 KiB message limit) is answered with a handshake error, then closed", TEST_OPTS, async () => {
        const c = await server.rawConnect({ token: await tokenFor(server) });
        c.send(JSON.stringify({ protocol: "json", version: 1, padding: "p".repeat(40_000) }) + RS);
        let first;
        try {
            first = await c.next(3000);
        } catch (err) {
            assert.fail(`no handshake reply before ${err.closed ? "the close" : "the timeout"}`);
        }
        assert.ok(first.handshake && first.msg && typeof first.msg.error === "string" && first.msg.error.length > 0, `reply ${first.raw}`);
        await c.waitClose(3000);
        assertNoPanic(server);
    });
});
