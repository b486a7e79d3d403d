// Helpers for the RabbitMQ integration tests (amqp-*.test.js): separate `hubcast router` / `hubcast edge`
// processes on a unique exchange prefix, a producer and inspector on amqplib, and cleanup of everything a
// test file declared.
//
// Broker location: AMQP_TEST_URL (default amqp://guest:guest@127.0.0.1:5672/%2f). Not a HUBCAST_* name on
// purpose: the servers inherit this process's environment and reject unknown HUBCAST_* keys.
// rabbitmqctl: RABBITMQCTL (default "rabbitmqctl"; e.g. "docker exec rabbit rabbitmqctl").
// When the broker is unreachable the suites are skipped, except with CI=true, where they fail.
//
// Like harness.js, this module has no side effects at import time (`node --test test/` loads it too).

import { spawn, execFile } from "node:child_process";
import { once } from "node:events";
import crypto from "node:crypto";
import amqp from "amqplib";
import { Server, BIN, withTimeout, sleep } from "./harness.js";

export const AMQP_URL = process.env.AMQP_TEST_URL || "amqp://guest:guest@127.0.0.1:5672/%2f";
export const IN_CI = process.env.CI === "true";
export const HUBS = [
    "tasks",
    "video-generation",
    "image-generation",
    "notifications",
    "spend",
    "webhooks",
    "admin-notifications",
];

const RABBITMQCTL = (process.env.RABBITMQCTL || "rabbitmqctl").split(/\s+/).filter(Boolean);
const START_TIMEOUT_MS = 20_000;
const STDERR_KEEP = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Broker availability
// ---------------------------------------------------------------------------------------------

/** Tries to open (and close) one AMQP connection; resolves with {ok, reason}. */
export async function probeBroker(url = AMQP_URL) {
    try {
        const conn = await withTimeout(amqp.connect(url), 5000, `connecting to ${redact(url)}`);
        conn.on("error", () => {});
        await conn.close();
        return { ok: true, reason: null };
    } catch (err) {
        return { ok: false, reason: `RabbitMQ is unreachable at ${redact(url)}: ${err.message}` };
    }
}

/** Whether `rabbitmqctl` answers; resolves with {ok, reason}. */
export async function probeRabbitmqctl() {
    try {
        await rabbitmqctl(["-q", "status"], 30_000);
        return { ok: true, reason: null };
    } catch (err) {
        return { ok: false, reason: `rabbitmqctl (${RABBITMQCTL.join(" ")}) does not work: ${err.message.split("\n")[0]}` };
    }
}

/**
 * The `skip` option of a suite that needs the broker: false when it is reachable or when CI=true (the
 * suite then runs and fails in its before hook, see requireBroker), else the reason (printed by node:test).
 */
export function skipUnlessBroker(...probes) {
    const failed = probes.find((p) => !p.ok);
    if (!failed || IN_CI) return false;
    return `${failed.reason} (skipped; with CI=true this fails)`;
}

/** Throws when a probe failed: makes a CI run fail instead of skipping. */
export function requireBroker(...probes) {
    const failed = probes.find((p) => !p.ok);
    if (failed) throw new Error(`${failed.reason} (CI=true: an unreachable broker is a failure)`);
}

function redact(url) {
    return url.replace(/\/\/([^:@/]*):[^@/]*@/, "//$1:***@");
}

// ---------------------------------------------------------------------------------------------
// rabbitmqctl
// ---------------------------------------------------------------------------------------------

export function rabbitmqctl(args, timeout = 60_000) {
    const [cmd, ...pre] = RABBITMQCTL;
    return new Promise((resolve, reject) => {
        execFile(cmd, [...pre, ...args], { timeout, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
            if (err) {
                reject(new Error(`${RABBITMQCTL.join(" ")} ${args.join(" ")} failed: ${err.message}\n${stderr}`));
                return;
            }
            resolve(stdout);
        });
    });
}

/** rabbitmqctl's JSON output of a list_* command as an array of objects. */
async function listJson(command, vhost, columns) {
    const out = await rabbitmqctl(["-q", command, "-p", vhost, ...columns, "--formatter", "json"]);
    const text = out.trim();
    return text ? JSON.parse(text) : [];
}

// ---------------------------------------------------------------------------------------------
// Server processes in one role
// ---------------------------------------------------------------------------------------------

/** A hubcast process running `role` (serve, edge or router); otherwise the harness's Server. */
export class RoleServer extends Server {
    constructor(role, envOverrides = {}, name = role) {
        super(envOverrides);
        this.role = role;
        this.name = name;
    }

    async start() {
        this.stderr = "";
        this.stdout = "";
        const child = spawn(BIN, [this.role], { env: this.env, stdio: ["ignore", "pipe", "pipe"] });
        this.child = child;
        this.exited = once(child, "exit").then(([code, signal]) => ({ code, signal }));
        child.stderr.setEncoding("utf8");
        child.stderr.on("data", (chunk) => {
            this.stderr += chunk;
            if (this.stderr.length > STDERR_KEEP) this.stderr = this.stderr.slice(-STDERR_KEEP);
        });
        child.stdout.setEncoding("utf8");
        const listening = new Promise((resolve, reject) => {
            let buffered = "";
            child.stdout.on("data", (chunk) => {
                this.stdout += chunk;
                buffered += chunk;
                let nl;
                while ((nl = buffered.indexOf("\n")) >= 0) {
                    const line = buffered.slice(0, nl).replace(/\r$/, "");
                    buffered = buffered.slice(nl + 1);
                    const m = /^hubcast listening on (http:\/\/127\.0\.0\.1:(\d+))$/.exec(line);
                    if (m) resolve({ url: m[1], port: Number(m[2]) });
                }
            });
            child.on("error", (err) => reject(new Error(`failed to spawn ${BIN}: ${err.message}`)));
            child.on("exit", (code, signal) =>
                reject(
                    new Error(
                        `hubcast ${this.role} exited before listening (code ${code}, signal ${signal})\n` +
                            `stdout:\n${this.stdout}\nstderr:\n${this.stderrTail()}`,
                    ),
                ),
            );
        });
        try {
            const { url, port } = await withTimeout(
                listening,
                START_TIMEOUT_MS,
                `hubcast ${this.role} did not print "hubcast listening on ..."`,
            );
            this.url = url;
            this.port = port;
            this.wsUrl = url.replace(/^http/, "ws");
        } catch (err) {
            await this.stop();
            throw new Error(`${err.message}\nstderr:\n${this.stderrTail()}`);
        }
        return this;
    }

    /** SIGKILL, no drain; resolves once the process is gone. */
    async kill() {
        if (!this.alive) return;
        this.child.kill("SIGKILL");
        await this.exited;
    }

    async readyz() {
        try {
            const res = await fetch(`${this.url}/readyz`);
            return { status: res.status, body: await res.text() };
        } catch (err) {
            return { status: "error", body: err.message };
        }
    }

    /** Polls /readyz until 200; throws with the last answer and the stderr tail otherwise. */
    async waitReady(ms = 15_000) {
        const deadline = Date.now() + ms;
        let last;
        while (Date.now() < deadline) {
            if (!this.alive) throw new Error(`hubcast ${this.name} exited\nstderr:\n${this.stderrTail()}`);
            last = await this.readyz();
            if (last.status === 200) return last;
            await sleep(50);
        }
        throw new Error(
            `hubcast ${this.name} /readyz not 200 within ${ms} ms (last ${JSON.stringify(last)})\nstderr:\n${this.stderrTail()}`,
        );
    }

    /** The value of one Prometheus gauge of /metrics (NaN when absent). */
    async metric(name) {
        const text = await (await fetch(`${this.url}/metrics`)).text();
        const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
        return m ? Number(m[1]) : NaN;
    }
}

// ---------------------------------------------------------------------------------------------
// One test file's world on the broker: a unique prefix (and optionally its own vhost)
// ---------------------------------------------------------------------------------------------

export class AmqpWorld {
    /** vhost: true makes a fresh vhost with rabbitmqctl (needed to close only this world's connections). */
    constructor({ vhost = false } = {}) {
        const rand = crypto.randomBytes(4).toString("hex");
        this.prefix = `t${rand}.`;
        this.vhostName = vhost ? `hubcast-test-${rand}` : null;
        this.url = AMQP_URL;
        this.servers = [];
        this.conn = null;
        this.ch = null;
        this.producerErrors = [];
    }

    get vhost() {
        return this.vhostName ?? decodeURIComponent(new URL(AMQP_URL).pathname.slice(1) || "/");
    }

    /** Creates the vhost (if any) and opens the producer connection. */
    async open() {
        if (this.vhostName) {
            await rabbitmqctl(["add_vhost", this.vhostName]);
            const user = decodeURIComponent(new URL(AMQP_URL).username || "guest");
            await rabbitmqctl(["set_permissions", "-p", this.vhostName, user, ".*", ".*", ".*"]);
            const u = new URL(AMQP_URL);
            u.pathname = "/" + encodeURIComponent(this.vhostName);
            this.url = u.toString();
        }
        await this.reconnect();
    }

    /** (Re)opens the producer connection and its confirm channel. */
    async reconnect() {
        if (this.conn) {
            try {
                await this.conn.close();
            } catch {
                /* already closed */
            }
        }
        const conn = await amqp.connect(this.url);
        conn.on("error", (err) => this.producerErrors.push(err));
        conn.on("close", () => {
            if (this.conn === conn) this.conn = null;
        });
        const ch = await conn.createConfirmChannel();
        ch.on("error", (err) => this.producerErrors.push(err));
        this.conn = conn;
        this.ch = ch;
    }

    /** The environment of a hubcast process (or CLI call) in this world. */
    env(extra = {}) {
        return {
            HUBCAST_BUS__AMQP_URL: this.url,
            HUBCAST_BUS__EXCHANGE_PREFIX: this.prefix,
            ...extra,
        };
    }

    /** Spawns `hubcast <role>` in this world; waits for /readyz 200 unless ready: false. */
    async start(role, { node, env = {}, ready = true, name } = {}) {
        const extra = { ...env };
        if (node !== undefined) extra.HUBCAST_BUS__NODE_ID = node;
        const server = new RoleServer(role, this.env(extra), name ?? (node ? `${role} ${node}` : role));
        this.servers.push(server);
        await server.start();
        if (ready) await server.waitReady();
        return server;
    }

    exchange(hub) {
        return `${this.prefix}${hub}`;
    }

    routerQueue(hub) {
        return `${this.prefix}${hub}.router`;
    }

    get deadLetter() {
        return `${this.prefix}dead-letter`;
    }

    get edgesExchange() {
        return `${this.prefix}hubcast.edges`;
    }

    get stateStream() {
        return `${this.prefix}hubcast.state`;
    }

    edgeQueue(node) {
        return `${this.prefix}hubcast.edge.${node}`;
    }

    /**
     * Publishes one message with amqplib (publisher confirms): body is an object (JSON-encoded), a string
     * or a Buffer (sent as is). Options: messageId, type, timestamp (seconds), headers, contentType.
     */
    publishNoWait(hub, routingKey, body, { messageId, type, timestamp, headers, contentType = "application/json" } = {}) {
        const content = Buffer.isBuffer(body) ? body : Buffer.from(typeof body === "string" ? body : JSON.stringify(body));
        const options = {
            contentType,
            timestamp: timestamp ?? Math.floor(Date.now() / 1000),
            persistent: true,
        };
        if (messageId !== undefined) options.messageId = messageId;
        if (type !== undefined) options.type = type;
        if (headers !== undefined) options.headers = headers;
        return new Promise((resolve, reject) => {
            this.ch.publish(this.exchange(hub), routingKey, content, options, (err) =>
                err ? reject(new Error(`broker nacked ${routingKey}: ${err}`)) : resolve(),
            );
        });
    }

    async publish(hub, routingKey, body, options = {}) {
        await withTimeout(this.publishNoWait(hub, routingKey, body, options), 10_000, `confirm of ${routingKey}`);
    }

    /** `hubcast publish` (lapin, publisher confirms) in this world; resolves with {code, stdout, stderr}. */
    cliPublish({ hub, routingKey, messageId, payload }) {
        const args = ["publish", "--hub", hub, "--routing-key", routingKey];
        if (messageId !== undefined) args.push("--message-id", messageId);
        args.push(typeof payload === "string" ? payload : JSON.stringify(payload));
        const probe = new Server(this.env());
        return new Promise((resolve) => {
            execFile(BIN, args, { env: probe.env, timeout: 20_000 }, (err, stdout, stderr) => {
                const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
                resolve({ code, stdout, stderr });
            });
        });
    }

    /** Every message of a queue, taken (basic.get, no ack) until it is empty. */
    async drain(queue) {
        const ch = await this.conn.createChannel();
        ch.on("error", () => {});
        const out = [];
        try {
            for (;;) {
                const msg = await ch.get(queue, { noAck: true });
                if (!msg) break;
                out.push(msg);
            }
        } finally {
            await ch.close().catch(() => {});
        }
        return out;
    }

    /** Takes messages of a queue until `count` were taken (or `ms` passed); returns them. */
    async take(queue, count, ms = 5000) {
        const out = [];
        const deadline = Date.now() + ms;
        while (out.length < count && Date.now() < deadline) {
            out.push(...(await this.drain(queue)));
            if (out.length < count) await sleep(100);
        }
        return out;
    }

    /** {messageCount, consumerCount} of a queue (passive declare). */
    async checkQueue(queue) {
        const ch = await this.conn.createChannel();
        ch.on("error", () => {});
        try {
            return await ch.checkQueue(queue);
        } finally {
            await ch.close().catch(() => {});
        }
    }

    /** rabbitmqctl list_queues of this world: {name: {messages, messages_ready, messages_unacknowledged, consumers}}. */
    async queues() {
        const rows = await listJson("list_queues", this.vhost, [
            "name",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ]);
        const out = {};
        for (const row of rows) if (row.name.startsWith(this.prefix)) out[row.name] = row;
        return out;
    }

    /** The routing keys binding the edges exchange to `queue`, sorted (rabbitmqctl list_bindings). */
    async bindingsOf(queue) {
        const rows = await listJson("list_bindings", this.vhost, ["source_name", "routing_key", "destination_name"]);
        return rows
            .filter((r) => r.source_name === this.edgesExchange && r.destination_name === queue)
            .map((r) => r.routing_key)
            .sort();
    }

    /** rabbitmqctl list_consumers rows of one queue: [{channel_pid, active, activity_status, ...}]. */
    async consumersOf(queue) {
        const rows = await listJson("list_consumers", this.vhost, ["queue_name", "channel_pid", "consumer_tag", "active", "activity_status"]);
        return rows.filter((r) => r.queue_name === queue);
    }

    /** Stops every process, deletes every queue and exchange of the prefix, closes the producer, drops the vhost. */
    async cleanup() {
        await Promise.all(this.servers.map((s) => s.stop().catch(() => {})));
        const errors = [];
        try {
            if (!this.conn) await this.reconnect();
            const names = {
                queues: [...HUBS.map((h) => this.routerQueue(h)), this.deadLetter, this.stateStream],
                exchanges: [...HUBS.map((h) => this.exchange(h)), this.deadLetter, this.edgesExchange],
            };
            for (const s of this.servers) {
                const node = s.env.HUBCAST_BUS__NODE_ID;
                if (node) names.queues.push(this.edgeQueue(node));
            }
            for (const [kind, list] of Object.entries(names)) {
                for (const name of list) {
                    // A failed delete closes the channel: one channel per delete.
                    const ch = await this.conn.createChannel();
                    ch.on("error", () => {});
                    try {
                        if (kind === "queues") await ch.deleteQueue(name);
                        else await ch.deleteExchange(name);
                        await ch.close();
                    } catch (err) {
                        errors.push(`${name}: ${err.message}`);
                    }
                }
            }
            await this.conn.close();
        } catch (err) {
            errors.push(err.message);
        }
        if (this.vhostName) {
            try {
                await rabbitmqctl(["delete_vhost", this.vhostName]);
            } catch (err) {
                errors.push(err.message);
            }
        }
        if (errors.length) console.error(`amqp cleanup of ${this.prefix}: ${errors.join("; ")}`);
    }

    /** Stderr tails of every process, for failure messages. */
    stderrTails(n = 3000) {
        return this.servers
            .map((s) => `--- hubcast ${s.name} (pid ${s.child?.pid}) stderr ---\n${s.stderrTail(n)}`)
            .join("\n");
    }
}

/** Registers an afterEach hook that prints every process's stderr after a failing test. */
export function printStderrOnFailure(afterEach, world) {
    afterEach((t) => {
        if (t.passed === false) console.error(`--- after failing test "${t.name}" ---\n${world.stderrTails()}`);
    });
}

/** Waits until `predicate()` (async) is truthy; returns its value or throws `what` (text or function) after `ms`. */
export async function eventually(predicate, ms, what, intervalMs = 50) {
    const deadline = Date.now() + ms;
    let last;
    for (;;) {
        last = await predicate();
        if (last) return last;
        if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${typeof what === "function" ? what() : what}`);
        await sleep(intervalMs);
    }
}
