// A server started under a low file-descriptor limit (ulimit -n 256), flooded with 300 idle TCP sockets:
// /healthz keeps answering on a fresh connection, requests over the limit are refused (503) or closed
// promptly instead of hanging, and the process stays alive (limits.reserved_file_descriptors, default 64).
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { sleep } from "./harness.js";
import { ShellServer, freshKey, assertNoPanic, tcpConnect, rawHttp, timedFetch } from "./hostile-helpers.js";

// Nothing may hang: every test is bounded.
const TEST_OPTS = { timeout: 40000 };

const server = new ShellServer({}, "ulimit -n 256");
before(async () => {
    await server.start();
});
afterEach((t) => {
    if (t.passed === false) console.error(`--- hubcast stderr (tail) after "${t.name}" ---\n${server.stderrTail()}`);
});
after(async () => {
    await server.stop();
});

test("300 idle sockets against ulimit -n 256: /healthz answers on a fresh connection, nothing hangs, the process lives", TEST_OPTS, async (t) => {
    const flood = [];
    try {
        for (let batch = 0; batch < 30; batch++) {
            const got = await Promise.allSettled(Array.from({ length: 10 }, () => tcpConnect(server.port)));
            for (const g of got) if (g.status === "fulfilled") flood.push(g.value);
        }
        await sleep(500);
        assert.ok(server.alive, `the server died under the flood\n${server.stderrTail()}`);

        // A fresh connection made after the flood: /healthz answers 200 (a couple of tries within 5 s).
        const deadline = Date.now() + 5000;
        let health;
        const tries = [];
        do {
            health = await rawHttp(server.port, `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`, { ms: 2000 });
            tries.push(`${health.status ?? (health.closed ? "closed" : "hung")} in ${health.ms} ms`);
            if (health.status === 200) break;
            await sleep(200);
        } while (Date.now() < deadline);

        // Twenty more requests on fresh connections: each answered (200/503) or closed within 3 s, none hang.
        const more = await Promise.all(
            Array.from({ length: 20 }, () =>
                rawHttp(server.port, `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`, { ms: 3000 }),
            ),
        );
        const outcome = more.map((r) => (r.status ?? (r.closed ? "closed" : "hung")));
        const counts = {};
        for (const o of outcome) counts[o] = (counts[o] ?? 0) + 1;
        t.diagnostic(
            `${flood.length} of 300 flood sockets connected, ${flood.filter((s) => s.closedAt).length} closed by the server; ` +
                `healthz tries: ${tries.join(", ")}; 20 more requests: ${JSON.stringify(counts)}`,
        );
        assert.equal(health.status, 200, `/healthz on a fresh connection: ${tries.join(", ")}`);
        for (const o of outcome) assert.ok(o === 200 || o === 503 || o === "closed", `a request over the limit: ${o}`);
        assert.ok(server.alive, `the server died\n${server.stderrTail()}`);
    } finally {
        for (const s of flood) s.destroy();
    }
    // Once the flood is gone, everything works again.
    await sleep(300);
    const h = await timedFetch(`${server.url}/healthz`, {}, 3000);
    assert.equal(h.status, 200);
    await server.assertServes({ vkey: freshKey() });
    assertNoPanic(server);
});
