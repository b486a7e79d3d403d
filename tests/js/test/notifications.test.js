// Notification preferences (contract section 3): enabledEvents and minimumSeverity filter what one
// connection receives; the severity of an event is its `severity` field or the derived one.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, record, waitFor, sleep } from "./harness.js";

const server = useServer();
const SETTLE_MS = 400;

const EVENTS = [
    "ProviderHealthChanged",
    "RateLimitWarning",
    "SystemAnnouncement",
    "ServiceDegraded",
    "ServiceRestored",
    "ModelMappingChanged",
    "ModelCapabilitiesDiscovered",
    "ModelAvailabilityChanged",
];

// name, event, body, severity (contract section 3)
const CATALOGUE = [
    ["phc-healthy", "ProviderHealthChanged", { provider: "openai", status: "healthy", message: "phc-healthy" }, "info"],
    ["phc-degraded", "ProviderHealthChanged", { provider: "openai", status: "degraded", message: "phc-degraded" }, "warning"],
    ["phc-unhealthy", "ProviderHealthChanged", { provider: "openai", status: "unhealthy", message: "phc-unhealthy" }, "error"],
    ["rlw", "RateLimitWarning", { endpoint: "rlw", remaining: 3, resetTime: "2025-11-25T21:00:00Z" }, "warning"],
    ["sa-info", "SystemAnnouncement", { title: "sa-info", message: "m", severity: "info" }, "info"],
    ["sa-warning", "SystemAnnouncement", { title: "sa-warning", message: "m", severity: "warning" }, "warning"],
    ["sa-error", "SystemAnnouncement", { title: "sa-error", message: "m", severity: "error" }, "error"],
    ["sa-critical", "SystemAnnouncement", { title: "sa-critical", message: "m", severity: "critical" }, "critical"],
    ["sd", "ServiceDegraded", { service: "sd", reason: "backlog" }, "warning"],
    ["sr", "ServiceRestored", { service: "sr" }, "info"],
    ["mmc", "ModelMappingChanged", { model: "mmc", newProvider: "azure" }, "info"],
    ["mcd", "ModelCapabilitiesDiscovered", { provider: "mcd", capabilities: [{ model: "m1", supportsVision: true }] }, "info"],
    ["mac-true", "ModelAvailabilityChanged", { model: "mac-true", isAvailable: true }, "info"],
    ["mac-false", "ModelAvailabilityChanged", { model: "mac-false", isAvailable: false }, "warning"],
];
const LEVEL = { info: 0, warning: 1, error: 2, critical: 3 };

/** Which catalogue entry a received event is (by the tag each body carries). */
function tagOf({ event, args }) {
    switch (event) {
        case "ProviderHealthChanged":
            return args[2];
        case "RateLimitWarning":
        case "SystemAnnouncement":
        case "ServiceDegraded":
        case "ServiceRestored":
        case "ModelMappingChanged":
        case "ModelCapabilitiesDiscovered":
        case "ModelAvailabilityChanged":
            return args[0];
        default:
            return `?${event}`;
    }
}

let keyCounter = 0;
function freshKey() {
    keyCounter += 1;
    return String(600000 + (process.pid % 1000) * 100 + keyCounter);
}

async function tenant(vkey, protocol = "json") {
    const token = await server.mintToken({ vkey });
    return server.connect({ hub: "notifications", token, protocol });
}

async function setPrefs(c, prefs) {
    const pushed = waitFor(c, "PreferencesUpdated");
    const effective = await c.invoke("UpdatePreferences", prefs);
    assert.deepEqual(effective, prefs, "UpdatePreferences returns the effective preferences");
    assert.deepEqual(await pushed, [prefs], "PreferencesUpdated carries them");
}

/**
 * Publishes the whole catalogue for one key with a filtered connection and a default-preferences
 * control connection of the same key; the filtered one must receive exactly `expected` (tags, in order).
 */
async function runCatalogue({ prefs, expected, protocol = "json", audience }) {
    const vkey = freshKey();
    const filtered = await tenant(vkey, protocol);
    const control = await tenant(vkey, protocol);
    try {
        if (prefs) await setPrefs(filtered, prefs);
        const rf = record(filtered, EVENTS);
        const rc = record(control, EVENTS);
        for (const [, event, body] of CATALOGUE) {
            await server.publish("notifications", `${audience ?? `vkey.${vkey}`}.${event}`, body);
        }
        await rc.until((l) => l.length >= CATALOGUE.length, 5000, "the control connection's events");
        await rf.until((l) => l.length >= expected.length, 5000, `the filtered connection's ${expected.length} events`);
        await sleep(SETTLE_MS);
        assert.deepEqual(rc.log.map(tagOf), CATALOGUE.map(([tag]) => tag), "control (default preferences) gets everything");
        assert.deepEqual(rf.log.map(tagOf), expected, `preferences ${JSON.stringify(prefs)}`);
    } finally {
        await filtered.stop();
        await control.stop();
    }
}

const atLeast = (min) => CATALOGUE.filter(([, , , sev]) => LEVEL[sev] >= LEVEL[min]).map(([tag]) => tag);

test("default preferences: every event arrives", async () => {
    await runCatalogue({ prefs: null, expected: CATALOGUE.map(([tag]) => tag) });
});

for (const protocol of ["json", "messagepack"]) {
    test(`minimumSeverity warning: derived and explicit severities (${protocol})`, async () => {
        const expected = atLeast("warning");
        assert.deepEqual(expected, [
            "phc-degraded",
            "phc-unhealthy",
            "rlw",
            "sa-warning",
            "sa-error",
            "sa-critical",
            "sd",
            "mac-false",
        ]);
        await runCatalogue({ prefs: { enabledEvents: null, minimumSeverity: "warning" }, expected, protocol });
    });
}

test("minimumSeverity error: ProviderHealthChanged unhealthy and SystemAnnouncement error/critical only", async () => {
    await runCatalogue({
        prefs: { enabledEvents: null, minimumSeverity: "error" },
        expected: ["phc-unhealthy", "sa-error", "sa-critical"],
    });
});

test("minimumSeverity critical: only the critical SystemAnnouncement", async () => {
    await runCatalogue({ prefs: { enabledEvents: null, minimumSeverity: "critical" }, expected: ["sa-critical"] });
});

test("enabledEvents filters by event name", async () => {
    await runCatalogue({
        prefs: { enabledEvents: ["ServiceRestored", "ModelAvailabilityChanged"], minimumSeverity: "info" },
        expected: ["sr", "mac-true", "mac-false"],
    });
});

test("enabledEvents and minimumSeverity together", async () => {
    await runCatalogue({
        prefs: { enabledEvents: ["ModelAvailabilityChanged", "ProviderHealthChanged"], minimumSeverity: "warning" },
        expected: ["phc-degraded", "phc-unhealthy", "mac-false"],
    });
});

test("enabledEvents [] receives nothing", async () => {
    await runCatalogue({ prefs: { enabledEvents: [], minimumSeverity: "info" }, expected: [] });
});

test("preferences apply to the all audience too", async () => {
    await runCatalogue({
        prefs: { enabledEvents: null, minimumSeverity: "error" },
        expected: ["phc-unhealthy", "sa-error", "sa-critical"],
        audience: "all",
    });
});

test("preferences can be reset to everything", async () => {
    const vkey = freshKey();
    const c = await tenant(vkey);
    try {
        await setPrefs(c, { enabledEvents: ["ServiceDegraded"], minimumSeverity: "critical" });
        const r = record(c, EVENTS);
        await server.publish("notifications", `vkey.${vkey}.ServiceRestored`, { service: "before-reset" });
        await setPrefs(c, { enabledEvents: null, minimumSeverity: "info" });
        await server.publish("notifications", `vkey.${vkey}.ServiceRestored`, { service: "after-reset" });
        await r.until((l) => l.length >= 1);
        await sleep(SETTLE_MS);
        assert.deepEqual(r.log.map(tagOf), ["after-reset"]);
    } finally {
        await c.stop();
    }
});

test("an explicit severity field on any event wins over the derived severity", async () => {
    const vkey = freshKey();
    const c = await tenant(vkey);
    try {
        await setPrefs(c, { enabledEvents: null, minimumSeverity: "warning" });
        const r = record(c, EVENTS);
        // Derived info, but the body says error: delivered.
        await server.publish("notifications", `vkey.${vkey}.ServiceRestored`, { service: "explicit-error", severity: "error" });
        // Derived warning, but the body says info: not delivered.
        await server.publish("notifications", `vkey.${vkey}.ServiceDegraded`, { service: "explicit-info", reason: "r", severity: "info" });
        // Control: derived error.
        await server.publish("notifications", `vkey.${vkey}.ProviderHealthChanged`, {
            provider: "p",
            status: "unhealthy",
            message: "control",
        });
        await r.until((l) => l.length >= 2);
        await sleep(SETTLE_MS);
        assert.deepEqual(r.log.map(tagOf), ["explicit-error", "control"]);
    } finally {
        await c.stop();
    }
});
