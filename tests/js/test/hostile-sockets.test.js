// Slow and idle sockets at the HTTP layer: connections that send nothing, drip headers, idle between
// keep-alive requests, or just sit there unauthenticated in numbers. Config keys limits.request_header_timeout
// (which also bounds the idle time between keep-alive requests) and limits.unauthenticated_connections.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { useServer, sleep, withTimeout } from "./harness.js";
import { freshKey, bearer, trackPanics, assertNoPanic, tcpConnect, timedFetch } from "./hostile-helpers.js";

// Nothing may hang: every test is bounded.
const TEST_OPTS = { timeout: 20000 };

// Each describe starts its own server (useServer inside a describe registers suite hooks), so that a
// configuration key the server does not know yet fails only the tests that need it.
const HEADER_TIMEOUT_S = 1;
const IDLE_TIMEOUT_S = 2;  // the idle limit is the header timeout: the next request's headers are awaited

/** Waits for the server to close `socket`; returns ms since `from`, or fails after `ms`. */
async function closedAfter(socket, from, ms, what) {
    try {
        await withTimeout(socket.ended, ms, what);
    } catch {
        socket.destroy();
        assert.fail(`${what}: still open after ${ms} ms`);
    }
    return socket.closedAt - from;
}

function responses(buf) {
    return (buf.toString("latin1").match(/HTTP\/1\.1 \d{3}/g) ?? []).map((s) => Number(s.slice(9)));
}

describe("slow HTTP requests (limits.request_header_timeout = 1s)", () => {
    const server = useServer({ HUBCAST_LIMITS__REQUEST_HEADER_TIMEOUT: `${HEADER_TIMEOUT_S}s` });
    trackPanics(server);

    test("a TCP connection that sends nothing is closed within request_header_timeout + 2 s", TEST_OPTS, async (t) => {
        const s = await tcpConnect(server.port);
        const ms = await closedAfter(s, s.connectedAt, (HEADER_TIMEOUT_S + 2) * 1000, "silent connection");
        t.diagnostic(`closed after ${ms} ms`);
        assert.ok(ms >= 500, `closed after only ${ms} ms`);
    });

    test("a slowloris dripping one header byte every 200 ms is closed within request_header_timeout + 2 s", TEST_OPTS, async (t) => {
        const s = await tcpConnect(server.port);
        s.write(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nX-Drip: `);
        const drip = setInterval(() => s.writable && s.write("a"), 200);
        try {
            const ms = await closedAfter(s, s.connectedAt, (HEADER_TIMEOUT_S + 2) * 1000, "slowloris");
            t.diagnostic(`closed after ${ms} ms; answered ${JSON.stringify(responses(s.received))}`);
        } finally {
            clearInterval(drip);
        }
        assert.ok(!responses(s.received).includes(200), "the dripped request was never served");
        assertNoPanic(server);
    });
});

describe("idle keep-alive connections (limits.request_header_timeout = 2s)", () => {
    const server = useServer({ HUBCAST_LIMITS__REQUEST_HEADER_TIMEOUT: `${IDLE_TIMEOUT_S}s` });
    trackPanics(server);

    test("a keep-alive connection idle after a full request/response is closed after request_header_timeout", TEST_OPTS, async (t) => {
        const s = await tcpConnect(server.port);
        const req = `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\n\r\n`;
        const waitResponses = async (n) => {
            const deadline = Date.now() + 3000;
            while (responses(s.received).length < n) {
                if (s.closedAt || Date.now() > deadline) assert.fail(`expected ${n} responses: ${s.received.toString("latin1")}`);
                await sleep(10);
            }
        };
        s.write(req);
        await waitResponses(1);
        await sleep(300);
        s.write(req); // keep-alive works
        await waitResponses(2);
        assert.deepEqual(responses(s.received), [200, 200]);
        const idleFrom = Date.now();
        const ms = await closedAfter(s, idleFrom, (IDLE_TIMEOUT_S + 2) * 1000, "idle keep-alive connection");
        t.diagnostic(`closed ${ms} ms after the last response`);
        assert.ok(ms >= (IDLE_TIMEOUT_S - 0.5) * 1000, `closed after only ${ms} ms of idleness`);
        assertNoPanic(server);
    });
});

describe("unauthenticated connections (limits.unauthenticated_connections = 20)", () => {
    const crowdServer = useServer({ HUBCAST_LIMITS__UNAUTHENTICATED_CONNECTIONS: "20" });
    trackPanics(crowdServer);

    test("with 60 idle raw sockets open: /healthz 200 at once, negotiate 200 or 503 within 3 s; afterwards 200 again", TEST_OPTS, async (t) => {
        const jwt = await crowdServer.mintToken({ vkey: freshKey() });
        const negotiate = () =>
            timedFetch(`${crowdServer.url}/hubs/tasks/negotiate?negotiateVersion=1`, { method: "POST", headers: bearer(jwt) }, 3000);
        const idle = [];
        try {
            for (let i = 0; i < 60; i++) idle.push(await tcpConnect(crowdServer.port));
            await sleep(200);
            const health = await timedFetch(`${crowdServer.url}/healthz`, {}, 2000);
            const neg = await negotiate();
            t.diagnostic(
                `healthz ${health.status ?? health.error?.name} in ${health.ms} ms; negotiate ${neg.status ?? neg.error?.name} in ${neg.ms} ms; ` +
                    `${idle.filter((s) => s.closedAt).length} of 60 idle sockets closed by the server`,
            );
            assert.equal(health.status, 200, `/healthz: ${health.status ?? health.error}`);
            assert.ok(health.ms < 2000);
            assert.ok([200, 503].includes(neg.status), `negotiate: ${neg.status ?? neg.error} after ${neg.ms} ms`);
        } finally {
            for (const s of idle) s.destroy();
        }
        const deadline = Date.now() + 3000;
        let last;
        do {
            last = await negotiate();
            if (last.status === 200) break;
            await sleep(100);
        } while (Date.now() < deadline);
        assert.equal(last.status, 200, `negotiate once the idle sockets are gone: ${last.status ?? last.error}`);
        await crowdServer.assertServes({ vkey: freshKey() });
        assertNoPanic(crowdServer);
    });
});
