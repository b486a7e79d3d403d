// The JSON Schemas of the event bodies (contract section 3): one per event in ../../schemas, each
// with an example that validates, each listing its required fields (and not the optional ones), and
// the router accepting every example.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Ajv from "ajv";
import Ajv2019 from "ajv/dist/2019.js";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { useServer } from "./harness.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const SCHEMAS = path.resolve(here, "../../../schemas");
const EXAMPLES = path.join(SCHEMAS, "examples");

const server = useServer();

// Every event of contract section 3, by hub.
const EVENTS = {
    tasks: ["TaskStarted", "TaskProgress", "TaskCompleted", "TaskFailed", "TaskCancelled", "TaskTimedOut"],
    "video-generation": [
        "VideoGenerationStarted",
        "VideoGenerationProgress",
        "VideoGenerationCompleted",
        "VideoGenerationFailed",
        "VideoGenerationCancelled",
    ],
    "image-generation": ["ImageGenerationStarted", "ImageGenerationProgress", "ImageGenerationCompleted", "ImageGenerationFailed"],
    notifications: [
        "ProviderHealthChanged",
        "RateLimitWarning",
        "SystemAnnouncement",
        "ServiceDegraded",
        "ServiceRestored",
        "ModelMappingChanged",
        "ModelCapabilitiesDiscovered",
        "ModelAvailabilityChanged",
    ],
    spend: ["SpendUpdate", "BudgetAlert", "SpendSummary", "UnusualSpendingAlert"],
    webhooks: ["DeliveryAttempted", "DeliverySucceeded", "DeliveryFailed", "RetryScheduled"],
    "admin-notifications": ["ProviderHealthStatus", "VirtualKeyCreated", "VirtualKeyUpdated", "VirtualKeyDeleted", "SystemAlert"],
};
const ALL = Object.entries(EVENTS).flatMap(([hub, events]) => events.map((event) => ({ hub, event, name: `${hub}.${event}` })));

// Contract section 3, "Required, and nothing else": exactly these required fields. For task events the
// contract also names `taskType` as a minimum field of every task event, so they are checked as
// "at least" sets below instead.
const REQUIRED_EXACTLY = {
    "video-generation.VideoGenerationStarted": ["requestId"],
    "video-generation.VideoGenerationProgress": ["requestId", "percentComplete"],
    "video-generation.VideoGenerationCompleted": ["requestId", "videoUrl"],
    "video-generation.VideoGenerationFailed": ["requestId", "error", "isRetryable"],
    "video-generation.VideoGenerationCancelled": ["requestId"],
    "image-generation.ImageGenerationStarted": ["taskId"],
    "image-generation.ImageGenerationProgress": ["taskId", "percentComplete"],
    "image-generation.ImageGenerationCompleted": ["taskId", "imageUrls"],
    "image-generation.ImageGenerationFailed": ["taskId", "error", "isRetryable"],
    "notifications.ProviderHealthChanged": ["provider", "status"],
    "notifications.RateLimitWarning": ["endpoint", "remaining", "resetTime"],
    "notifications.SystemAnnouncement": ["title", "message", "severity"],
    "notifications.ServiceDegraded": ["service", "reason"],
    "notifications.ServiceRestored": ["service"],
    "notifications.ModelMappingChanged": ["model"],
    "notifications.ModelCapabilitiesDiscovered": ["provider", "capabilities"],
    "notifications.ModelAvailabilityChanged": ["model", "isAvailable"],
    "spend.SpendUpdate": ["amount", "totalSpend"],
    "spend.BudgetAlert": ["alertType"],
    "spend.SpendSummary": ["period"],
    "spend.UnusualSpendingAlert": [],
    "webhooks.DeliveryAttempted": ["url"],
    "webhooks.DeliverySucceeded": ["url"],
    "webhooks.DeliveryFailed": ["url"],
    "webhooks.RetryScheduled": ["url"],
    "admin-notifications.ProviderHealthStatus": ["provider", "status", "checkedAt"],
    "admin-notifications.VirtualKeyCreated": ["virtualKeyId"],
    "admin-notifications.VirtualKeyUpdated": ["virtualKeyId"],
    "admin-notifications.VirtualKeyDeleted": ["virtualKeyId"],
    "admin-notifications.SystemAlert": ["severity", "title", "message"],
};
const TASK_REQUIRED_AT_LEAST = {
    "tasks.TaskStarted": ["taskId", "taskType"],
    "tasks.TaskProgress": ["taskId", "taskType", "percentComplete"],
    "tasks.TaskCompleted": ["taskId", "taskType"],
    "tasks.TaskFailed": ["taskId", "taskType", "error"],
    "tasks.TaskCancelled": ["taskId", "taskType"],
    "tasks.TaskTimedOut": ["taskId", "taskType"],
};
const TASK_OPTIONAL = {
    "tasks.TaskStarted": ["metadata"],
    "tasks.TaskProgress": ["message"],
    "tasks.TaskCompleted": ["result"],
    "tasks.TaskFailed": ["details"],
    "tasks.TaskCancelled": ["reason"],
};

function schemaFiles() {
    if (!fs.existsSync(SCHEMAS)) return [];
    return fs.readdirSync(SCHEMAS).filter((f) => f.endsWith(".schema.json")).sort();
}

function readJson(file) {
    return JSON.parse(fs.readFileSync(file, "utf8"));
}

function ajvFor(schema) {
    const draft = String(schema.$schema ?? "");
    const options = { allErrors: true, strict: false, validateFormats: true };
    const ajv = draft.includes("2020-12") ? new Ajv2020(options) : draft.includes("2019-09") ? new Ajv2019(options) : new Ajv(options);
    addFormats(ajv);
    // Formats that schemars emits for Rust number types.
    for (const [name, min, max] of [
        ["uint", 0, Number.MAX_SAFE_INTEGER],
        ["uint8", 0, 255],
        ["uint16", 0, 65535],
        ["uint32", 0, 4294967295],
        ["uint64", 0, Number.MAX_SAFE_INTEGER],
        ["int", Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
        ["int8", -128, 127],
        ["int16", -32768, 32767],
        ["int32", -2147483648, 2147483647],
        ["int64", Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
    ]) {
        ajv.addFormat(name, { type: "number", validate: (x) => Number.isInteger(x) && x >= min && x <= max });
    }
    for (const name of ["float", "double"]) ajv.addFormat(name, { type: "number", validate: () => true });
    return ajv;
}

function compile(name) {
    const schema = readJson(path.join(SCHEMAS, `${name}.schema.json`));
    return { schema, validate: ajvFor(schema).compile(schema) };
}

function routingKey(hub, event) {
    return hub === "admin-notifications" ? `admin.${event}` : `vkey.5150.${event}`;
}

test("schemas/ has one <hub>.<Event>.schema.json per event of the contract, and nothing else", () => {
    const files = schemaFiles();
    assert.ok(files.length > 0, `no *.schema.json in ${SCHEMAS}`);
    assert.deepEqual(files, ALL.map((e) => `${e.name}.schema.json`).sort());
});

test("every schema has an example that validates against it", () => {
    const missing = [];
    for (const file of schemaFiles()) {
        const name = file.replace(/\.schema\.json$/, "");
        const exampleFile = path.join(EXAMPLES, `${name}.json`);
        if (!fs.existsSync(exampleFile)) {
            missing.push(name);
            continue;
        }
        const { validate } = compile(name);
        const example = readJson(exampleFile);
        assert.ok(validate(example), `${name}: example does not validate: ${JSON.stringify(validate.errors)}`);
    }
    assert.ok(schemaFiles().length > 0, "there are schemas");
    assert.deepEqual(missing, [], "schemas without an example");
});

test("every schema lists its required fields, and not the optional ones", () => {
    const files = schemaFiles();
    assert.ok(files.length > 0, "there are schemas");
    for (const file of files) {
        const name = file.replace(/\.schema\.json$/, "");
        const schema = readJson(path.join(SCHEMAS, file));
        assert.equal(schema.type, "object", `${name}: an object schema`);
        const required = schema.required ?? null;
        if (name in REQUIRED_EXACTLY) {
            const expected = REQUIRED_EXACTLY[name];
            if (expected.length > 0) assert.ok(Array.isArray(required), `${name}: lists required`);
            assert.deepEqual([...(required ?? [])].sort(), [...expected].sort(), `${name}: required fields`);
        } else if (name in TASK_REQUIRED_AT_LEAST) {
            assert.ok(Array.isArray(required), `${name}: lists required`);
            for (const field of TASK_REQUIRED_AT_LEAST[name]) assert.ok(required.includes(field), `${name} requires ${field}`);
            for (const field of TASK_OPTIONAL[name] ?? []) assert.ok(!required.includes(field), `${name}: ${field} is optional`);
            assert.ok(schema.properties && TASK_REQUIRED_AT_LEAST[name].every((f) => f in schema.properties), `${name}: properties`);
        } else {
            assert.fail(`${name}: not an event of the contract`);
        }
        // Bodies may carry fields beyond the schema's.
        assert.notEqual(schema.additionalProperties, false, `${name}: extra fields are allowed (forward compatibility)`);
    }
});

test("hand-written invalid bodies fail their schemas; the valid variants pass", () => {
    const cases = [
        ["tasks.TaskProgress", { taskId: "t1", taskType: "x", percentComplete: 150 }, false],
        ["tasks.TaskProgress", { taskId: "t1", taskType: "x", percentComplete: -1 }, false],
        ["tasks.TaskProgress", { taskId: "t1", taskType: "x", percentComplete: 50.5 }, false],
        ["tasks.TaskProgress", { taskType: "x", percentComplete: 50 }, false],
        ["tasks.TaskProgress", { taskId: "t1", taskType: "x", percentComplete: 100, message: "done" }, true],
        ["tasks.TaskProgress", { taskId: "t1", taskType: "x", percentComplete: 0, futureField: { a: 1 } }, true],
        ["spend.SpendUpdate", { totalSpend: 12.5, budget: 100 }, false],
        ["spend.SpendUpdate", { amount: 0.5, totalSpend: 12.5 }, true],
        ["spend.SpendUpdate", { amount: 0.5, totalSpend: 12.5, budgetUtilization: 1.25 }, true],
        ["admin-notifications.ProviderHealthStatus", { provider: "p", status: "sick", checkedAt: "2025-11-25T21:00:00Z" }, false],
        ["admin-notifications.ProviderHealthStatus", { provider: "p", status: "degraded", checkedAt: "2025-11-25T21:00:00Z" }, true],
        ["admin-notifications.ProviderHealthStatus", { provider: "p", status: "healthy", checkedAt: "yesterday" }, false],
        ["admin-notifications.SystemAlert", { severity: "loud", title: "t", message: "m" }, false],
        ["admin-notifications.SystemAlert", { severity: "critical", title: "t", message: "m" }, true],
        ["admin-notifications.SystemAlert", { severity: "critical", title: "t" }, false],
        ["notifications.SystemAnnouncement", { title: "t", message: "m", severity: "warning" }, true],
        ["notifications.SystemAnnouncement", { title: "t", message: "m", severity: "urgent" }, false],
        ["video-generation.VideoGenerationFailed", { requestId: "r", error: "e" }, false],
        ["video-generation.VideoGenerationFailed", { requestId: "r", error: "e", isRetryable: false }, true],
        ["image-generation.ImageGenerationCompleted", { taskId: "t" }, false],
        ["image-generation.ImageGenerationCompleted", { taskId: "t", imageUrls: ["https://cdn.example.com/1.png"] }, true],
        ["webhooks.DeliverySucceeded", { statusCode: 200 }, false],
        ["webhooks.DeliverySucceeded", { url: "https://hooks.example.com/x", statusCode: 200, responseTimeMs: 5 }, true],
    ];
    for (const [name, body, valid] of cases) {
        assert.ok(fs.existsSync(path.join(SCHEMAS, `${name}.schema.json`)), `${name}.schema.json exists`);
        const { validate } = compile(name);
        assert.equal(validate(body), valid, `${name} ${JSON.stringify(body)} should ${valid ? "pass" : "fail"}: ${JSON.stringify(validate.errors)}`);
    }
});

test("the router accepts every example (POST /api/v1/publish answers 202)", async () => {
    const files = schemaFiles();
    assert.ok(files.length > 0, "there are schemas");
    for (const { hub, event, name } of ALL) {
        const exampleFile = path.join(EXAMPLES, `${name}.json`);
        assert.ok(fs.existsSync(exampleFile), `${exampleFile} exists`);
        const res = await server.publishRaw({ hub, routingKey: routingKey(hub, event), payload: readJson(exampleFile) });
        assert.equal(res.status, 202, `${name}: ${res.status} ${res.text}`);
    }
});
