// Helpers for the observability tests (metrics.test.js, tracing.test.js, drain.test.js): a parser of the
// OpenMetrics text of /metrics, and an in-test OTLP/HTTP JSON receiver.
//
// Like harness.js, this module has no side effects at import time (`node --test test/` loads it too).

import http from "node:http";
import { once } from "node:events";

// ---------------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------------

/** Parses `k="v",k2="v2"` (with \\, \" and \n escapes) into an object. */
function parseLabels(text) {
    const labels = {};
    let i = 0;
    while (i < text.length) {
        const eq = text.indexOf("=", i);
        if (eq < 0) throw new Error(`bad label set {${text}}`);
        const key = text.slice(i, eq).trim();
        if (text[eq + 1] !== '"') throw new Error(`bad label value in {${text}}`);
        let j = eq + 2;
        let value = "";
        while (j < text.length && text[j] !== '"') {
            if (text[j] === "\\") {
                const n = text[j + 1];
                value += n === "n" ? "\n" : n;
                j += 2;
            } else {
                value += text[j];
                j += 1;
            }
        }
        if (text[j] !== '"') throw new Error(`unterminated label value in {${text}}`);
        labels[key] = value;
        i = j + 1;
        if (text[i] === ",") i += 1;
    }
    return labels;
}

/** One scrape of /metrics: the samples, the `# TYPE` of each family, the raw text and the content type. */
export class Scrape {
    constructor(text, contentType = "") {
        this.text = text;
        this.contentType = contentType;
        this.samples = [];
        this.types = {};
        for (const line of text.split("\n")) {
            if (!line) continue;
            if (line.startsWith("#")) {
                const m = /^# TYPE (\S+) (\S+)$/.exec(line);
                if (m) this.types[m[1]] = m[2];
                continue;
            }
            const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \S+)?$/.exec(line);
            if (!m) throw new Error(`unparsable /metrics line ${JSON.stringify(line)}`);
            const raw = m[3];
            const value = raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw);
            if (Number.isNaN(value) && raw !== "NaN") throw new Error(`unparsable value in ${JSON.stringify(line)}`);
            this.samples.push({ name: m[1], labels: m[2] ? parseLabels(m[2]) : {}, value });
        }
    }

    /** Samples of `name` whose labels include every pair of `labels`. */
    matching(name, labels = {}) {
        return this.samples.filter(
            (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === String(v)),
        );
    }

    /** The value of the sample with exactly these labels; undefined when absent. */
    get(name, labels = {}) {
        const want = Object.keys(labels).length;
        const hits = this.matching(name, labels).filter((s) => Object.keys(s.labels).length === want);
        if (hits.length > 1) throw new Error(`${name}${JSON.stringify(labels)} appears ${hits.length} times`);
        return hits[0]?.value;
    }

    /** Like get, 0 when absent (counters that were never touched). */
    value(name, labels = {}) {
        return this.get(name, labels) ?? 0;
    }

    /** The sum over every sample of `name` whose labels include `labels`. */
    sum(name, labels = {}) {
        return this.matching(name, labels).reduce((a, s) => a + s.value, 0);
    }

    /** {labelsJson: value} of every sample of `name`, for failure messages and whole-family comparisons. */
    family(name) {
        const out = {};
        for (const s of this.matching(name)) out[JSON.stringify(s.labels)] = s.value;
        return out;
    }
}

/** GET /metrics of a server (anything with `.url`); throws unless 200. */
export async function scrape(server) {
    const res = await fetch(`${server.url}/metrics`);
    const text = await res.text();
    if (res.status !== 200) throw new Error(`/metrics answered ${res.status}: ${text.slice(0, 500)}`);
    return new Scrape(text, res.headers.get("content-type") ?? "");
}

/**
 * The per-label-set difference of one family between two scrapes, only the non-zero entries:
 * {labelsJson: after - before}.
 */
export function familyDelta(before, after, name) {
    const b = before.family(name);
    const a = after.family(name);
    const out = {};
    for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
        const d = (a[key] ?? 0) - (b[key] ?? 0);
        if (d !== 0) out[key] = d;
    }
    return out;
}

/** The JSON key familyDelta uses for a label set, with the labels in the order given. */
export const L = (labels) => JSON.stringify(labels);

// ---------------------------------------------------------------------------------------------
// OTLP/HTTP JSON receiver
// ---------------------------------------------------------------------------------------------

/** Hex of an OTLP JSON id: hex (the OTLP JSON encoding) or base64 (protobuf-JSON style), normalised. */
function idHex(v, bytes) {
    if (v === undefined || v === null || v === "") return "";
    if (typeof v !== "string") return String(v);
    if (new RegExp(`^[0-9a-fA-F]{${bytes * 2}}$`).test(v)) return v.toLowerCase();
    const buf = Buffer.from(v, "base64");
    return buf.length === bytes ? buf.toString("hex") : v;
}

function attrValue(v) {
    if (!v || typeof v !== "object") return v;
    if ("stringValue" in v) return v.stringValue;
    if ("intValue" in v) return Number(v.intValue);
    if ("boolValue" in v) return v.boolValue;
    if ("doubleValue" in v) return v.doubleValue;
    return v;
}

/**
 * A node http server that takes OTLP/HTTP JSON trace exports (POST /v1/traces) and keeps every request
 * (method, path, content type, body) and every span, flattened with its resource's service.name.
 */
export class OtlpReceiver {
    constructor(name = "receiver") {
        this.name = name;
        this.requests = [];
        this.spans = [];
        this.errors = [];
        this.server = http.createServer((req, res) => {
            const chunks = [];
            req.on("data", (c) => chunks.push(c));
            req.on("end", () => {
                const body = Buffer.concat(chunks);
                const entry = {
                    method: req.method,
                    path: req.url,
                    contentType: req.headers["content-type"] ?? "",
                    encoding: req.headers["content-encoding"] ?? "",
                    body,
                    at: Date.now(),
                };
                this.requests.push(entry);
                try {
                    const json = JSON.parse(body.toString("utf8"));
                    entry.json = json;
                    for (const rs of json.resourceSpans ?? []) {
                        const resource = {};
                        for (const a of rs.resource?.attributes ?? []) resource[a.key] = attrValue(a.value);
                        for (const ss of rs.scopeSpans ?? []) {
                            for (const s of ss.spans ?? []) {
                                const attributes = {};
                                for (const a of s.attributes ?? []) attributes[a.key] = attrValue(a.value);
                                this.spans.push({
                                    name: s.name,
                                    traceId: idHex(s.traceId, 16),
                                    spanId: idHex(s.spanId, 8),
                                    parentSpanId: idHex(s.parentSpanId, 8),
                                    service: resource["service.name"],
                                    scope: ss.scope?.name,
                                    attributes,
                                    raw: s,
                                });
                            }
                        }
                    }
                } catch (err) {
                    this.errors.push(`${req.method} ${req.url} (${entry.contentType}): ${err.message}`);
                }
                res.writeHead(200, { "Content-Type": "application/json" });
                res.end("{}");
            });
        });
    }

    async start() {
        this.server.listen(0, "127.0.0.1");
        await once(this.server, "listening");
        this.port = this.server.address().port;
        this.url = `http://127.0.0.1:${this.port}`;
        return this;
    }

    async stop() {
        this.server.closeAllConnections?.();
        await new Promise((resolve) => this.server.close(() => resolve()));
    }

    spansOf(traceId) {
        return this.spans.filter((s) => s.traceId === traceId);
    }

    /** A short description of what arrived, for failure messages. */
    describe() {
        return (
            `${this.name}: ${this.requests.length} request(s) ` +
            JSON.stringify(this.requests.map((r) => `${r.method} ${r.path} ${r.contentType}`)) +
            `; spans ${JSON.stringify(
                this.spans.map((s) => ({ name: s.name, traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId, service: s.service })),
            )}` +
            (this.errors.length ? `; errors ${JSON.stringify(this.errors)}` : "")
        );
    }
}
