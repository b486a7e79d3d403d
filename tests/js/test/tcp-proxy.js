// A TCP proxy for tests that need to break a connection the way a network does: `cut()` destroys both
// sockets of every proxied connection (no WebSocket close frame, no HTTP response) and holds new client
// connections until `resume()`. It also notes the HTTP request and status lines it sees, so a test can tell
// which requests a client made and how the server answered them.
//
// No side effects at import time (`node --test test/` loads every file under test/).

import net from "node:net";
import { once } from "node:events";

const REQUEST_LINE = /(?:^|\r\n)((?:GET|POST|DELETE|PUT|OPTIONS|HEAD) (\S+) HTTP\/1\.[01])\r\n/g;
const STATUS_LINE = /(?:^|\r\n)(HTTP\/1\.[01] (\d{3})[^\r\n]*)\r\n/g;

export class CuttableProxy {
    constructor(targetPort, targetHost = "127.0.0.1") {
        this.targetPort = targetPort;
        this.targetHost = targetHost;
        this.paused = false;
        this.pairs = new Set();
        this.held = [];
        this.nextId = 0;
        /** {conn, kind: "request" | "response", line, target?, status?} in the order seen. */
        this.log = [];
        this.server = null;
        this.port = null;
    }

    async start() {
        this.server = net.createServer((client) => this._accept(client));
        this.server.listen(0, "127.0.0.1");
        await once(this.server, "listening");
        this.port = this.server.address().port;
        return this;
    }

    get url() {
        return `http://127.0.0.1:${this.port}`;
    }

    _accept(client) {
        const pair = { id: ++this.nextId, client, upstream: null, upgraded: false };
        this.pairs.add(pair);
        client.on("error", () => {});
        client.on("close", () => {
            pair.upstream?.destroy();
            this.pairs.delete(pair);
        });
        if (this.paused) {
            client.pause();
            this.held.push(pair);
        } else {
            this._forward(pair);
        }
    }

    _forward(pair) {
        const { client } = pair;
        if (client.destroyed) return;
        const upstream = net.connect(this.targetPort, this.targetHost);
        pair.upstream = upstream;
        upstream.on("error", () => {});
        upstream.on("close", () => client.destroy());
        client.on("data", (chunk) => {
            if (!pair.upgraded) this._sniff(pair, chunk, "request");
            upstream.write(chunk);
        });
        upstream.on("data", (chunk) => {
            if (!pair.upgraded) this._sniff(pair, chunk, "response");
            if (!client.destroyed) client.write(chunk);
        });
        client.resume();
    }

    _sniff(pair, chunk, kind) {
        const text = chunk.toString("latin1");
        const re = kind === "request" ? REQUEST_LINE : STATUS_LINE;
        re.lastIndex = 0;
        let m;
        while ((m = re.exec(text)) !== null) {
            const entry = { conn: pair.id, kind, line: m[1] };
            if (kind === "request") entry.target = m[2];
            else {
                entry.status = Number(m[2]);
                if (entry.status === 101) pair.upgraded = true;
            }
            this.log.push(entry);
        }
    }

    /** Destroys both sides of every proxied connection and holds new ones until `resume()`. */
    cut() {
        this.paused = true;
        for (const pair of this.pairs) {
            if (this.held.includes(pair)) continue;
            pair.client.destroy();
            pair.upstream?.destroy();
        }
    }

    /** Forwards held and new connections again. */
    resume() {
        this.paused = false;
        const held = this.held;
        this.held = [];
        for (const pair of held) this._forward(pair);
    }

    /** Number of client connections currently held by a cut. */
    get heldCount() {
        return this.held.filter((p) => !p.client.destroyed).length;
    }

    /** The request entries of the log, each with the status of the response seen next on its connection. */
    requests() {
        const out = [];
        const pending = new Map(); // conn -> queue of request entries awaiting a status
        for (const e of this.log) {
            if (e.kind === "request") {
                const r = { conn: e.conn, target: e.target, line: e.line, status: null };
                out.push(r);
                if (!pending.has(e.conn)) pending.set(e.conn, []);
                pending.get(e.conn).push(r);
            } else {
                const q = pending.get(e.conn);
                if (q && q.length) q.shift().status = e.status;
            }
        }
        return out;
    }

    async close() {
        this.paused = false;
        for (const pair of this.pairs) {
            pair.client.destroy();
            pair.upstream?.destroy();
        }
        this.pairs.clear();
        this.held = [];
        if (this.server) {
            await new Promise((resolve) => this.server.close(() => resolve()));
            this.server = null;
        }
    }
}
