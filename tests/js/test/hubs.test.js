// Every event of contract section 3 reaches a subscribed client with exactly the contract's argument
// list, in JSON and in MessagePack; every client-callable method answers as specified.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
    useServer,
    waitFor,
    invokeError,
    uid,
    MASTER_KEY,
    HUB_EXCEPTION,
    NO_SUCH_METHOD,
} from "./harness.js";

const server = useServer();
const PROTOCOLS = ["json", "messagepack"];
const TS = "2025-11-25T21:00:00Z";
const TS2 = "2025-11-25T21:05:30.250Z";
// A field no schema knows: it must be forwarded unchanged inside `data` objects.
const EXTENSION = { nested: { list: [1, "two", { three: 3 }], flag: false, nothing: null }, ratio: 0.25 };

let keyCounter = 0;
/** A fresh virtual key id (numeric, like Conduit's), so per-key state never leaks between tests. */
function freshKey() {
    keyCounter += 1;
    return String(700000 + (process.pid % 1000) * 100 + keyCounter);
}

async function tenant(hub, vkey, protocol) {
    const token = await server.mintToken({ vkey });
    return server.connect({ hub, token, protocol });
}

async function admin(protocol) {
    return server.connect({ hub: "admin-notifications", token: MASTER_KEY, protocol });
}

function isVoid(result) {
    return result === undefined || result === null;
}

/** Publishes and asserts that `event` arrives on `c` with exactly `expected`. */
async function expectEvent(c, hub, routingKey, event, body, expected) {
    const got = waitFor(c, event, 5000);
    await server.publish(hub, routingKey, body);
    assert.deepEqual(await got, expected, `${hub} ${routingKey} ${JSON.stringify(body)}`);
}

function without(obj, key) {
    const copy = { ...obj };
    delete copy[key];
    return copy;
}

for (const protocol of PROTOCOLS) {
    // -----------------------------------------------------------------------------------------
    // tasks
    // -----------------------------------------------------------------------------------------
    test(`tasks: every event with exactly its argument list, optional args as null (${protocol})`, async () => {
        const vkey = freshKey();
        const c = await tenant("tasks", vkey, protocol);
        const taskId = uid("task");
        const taskType = "video-render";
        assert.ok(isVoid(await c.invoke("SubscribeToTask", taskId)));
        const rk = (e) => `vkey.${vkey}.${e}`;
        const metadata = { model: "sora-2", prompt: "a cat", options: { fps: 24, loop: false }, tags: ["a", "b"] };

        await expectEvent(c, "tasks", rk("TaskStarted"), "TaskStarted", { taskId, taskType, metadata }, [
            taskId,
            taskType,
            metadata,
        ]);
        await expectEvent(c, "tasks", rk("TaskStarted"), "TaskStarted", { taskId, taskType }, [taskId, taskType, null]);

        await expectEvent(
            c,
            "tasks",
            rk("TaskProgress"),
            "TaskProgress",
            { taskId, taskType, percentComplete: 42, message: "rendering" },
            [taskId, 42, "rendering"],
        );
        await expectEvent(c, "tasks", rk("TaskProgress"), "TaskProgress", { taskId, taskType, percentComplete: 0 }, [
            taskId,
            0,
            null,
        ]);
        await expectEvent(c, "tasks", rk("TaskProgress"), "TaskProgress", { taskId, taskType, percentComplete: 100 }, [
            taskId,
            100,
            null,
        ]);
        // Extra top-level fields are accepted (forward compatibility) and do not change the arguments.
        await expectEvent(
            c,
            "tasks",
            rk("TaskProgress"),
            "TaskProgress",
            { taskId, taskType, percentComplete: 43, message: "m", futureField: EXTENSION },
            [taskId, 43, "m"],
        );

        const result = { videoUrl: "https://cdn.example.com/v/1.mp4", durationSeconds: 8.5, extension: EXTENSION };
        await expectEvent(c, "tasks", rk("TaskCompleted"), "TaskCompleted", { taskId, taskType, result }, [
            taskId,
            result,
        ]);
        await expectEvent(c, "tasks", rk("TaskCompleted"), "TaskCompleted", { taskId, taskType }, [taskId, null]);

        await expectEvent(
            c,
            "tasks",
            rk("TaskFailed"),
            "TaskFailed",
            { taskId, taskType, error: "Provider timeout", details: "upstream 504 after 30 s" },
            [taskId, "Provider timeout", "upstream 504 after 30 s"],
        );
        await expectEvent(c, "tasks", rk("TaskFailed"), "TaskFailed", { taskId, taskType, error: "boom" }, [
            taskId,
            "boom",
            null,
        ]);

        await expectEvent(c, "tasks", rk("TaskCancelled"), "TaskCancelled", { taskId, taskType, reason: "user" }, [
            taskId,
            "user",
        ]);
        await expectEvent(c, "tasks", rk("TaskCancelled"), "TaskCancelled", { taskId, taskType }, [taskId, null]);

        await expectEvent(c, "tasks", rk("TaskTimedOut"), "TaskTimedOut", { taskId, taskType }, [taskId]);
    });

    // -----------------------------------------------------------------------------------------
    // video-generation
    // -----------------------------------------------------------------------------------------
    test(`video-generation: every event sends the whole body as (data) (${protocol})`, async () => {
        const vkey = freshKey();
        const c = await tenant("video-generation", vkey, protocol);
        const requestId = uid("vid");
        assert.ok(isVoid(await c.invoke("SubscribeToRequest", requestId)));
        const bodies = {
            VideoGenerationStarted: {
                requestId,
                model: "sora-2",
                prompt: "a cat on a skateboard",
                status: "Started",
                startedAt: TS,
                estimatedSeconds: 90,
                extension: EXTENSION,
            },
            VideoGenerationProgress: {
                requestId,
                percentComplete: 45,
                status: "Processing",
                message: "Rendering frames",
                extension: EXTENSION,
            },
            VideoGenerationCompleted: {
                requestId,
                videoUrl: "https://cdn.example.com/v/abc.mp4",
                status: "Completed",
                cost: 0.42,
                completedAt: TS2,
                extension: EXTENSION,
            },
            VideoGenerationFailed: {
                requestId,
                error: "Content policy violation",
                isRetryable: false,
                failedAt: TS2,
                extension: EXTENSION,
            },
            VideoGenerationCancelled: { requestId, reason: "user", cancelledAt: TS2, extension: EXTENSION },
        };
        for (const [event, body] of Object.entries(bodies)) {
            await expectEvent(c, "video-generation", `vkey.${vkey}.${event}`, event, body, [body]);
        }
        // Minimal bodies: the object is exactly what was published (no fields made up).
        const minimal = {
            VideoGenerationStarted: { requestId },
            VideoGenerationProgress: { requestId, percentComplete: 1 },
            VideoGenerationCompleted: { requestId, videoUrl: "https://cdn.example.com/v/min.mp4" },
            VideoGenerationFailed: { requestId, error: "x", isRetryable: true },
            VideoGenerationCancelled: { requestId },
        };
        for (const [event, body] of Object.entries(minimal)) {
            await expectEvent(c, "video-generation", `vkey.${vkey}.${event}`, event, body, [body]);
        }
    });

    // -----------------------------------------------------------------------------------------
    // image-generation
    // -----------------------------------------------------------------------------------------
    test(`image-generation: every event sends the whole body as (data) (${protocol})`, async () => {
        const vkey = freshKey();
        const c = await tenant("image-generation", vkey, protocol);
        const taskId = uid("img");
        assert.ok(isVoid(await c.invoke("SubscribeToTask", taskId)));
        const bodies = {
            ImageGenerationStarted: {
                taskId,
                prompt: "a lighthouse at dusk",
                model: "dall-e-3",
                numberOfImages: 2,
                startedAt: TS,
                extension: EXTENSION,
            },
            ImageGenerationProgress: { taskId, percentComplete: 50, status: "Processing", message: "1 of 2" },
            ImageGenerationCompleted: {
                taskId,
                imageUrls: ["https://cdn.example.com/i/1.png", "https://cdn.example.com/i/2.png"],
                cost: 0.08,
                completedAt: TS2,
                extension: EXTENSION,
            },
            ImageGenerationFailed: { taskId, error: "Provider error", isRetryable: true, failedAt: TS2 },
        };
        for (const [event, body] of Object.entries(bodies)) {
            await expectEvent(c, "image-generation", `vkey.${vkey}.${event}`, event, body, [body]);
        }
    });

    // -----------------------------------------------------------------------------------------
    // notifications
    // -----------------------------------------------------------------------------------------
    test(`notifications: every event with exactly its argument list, vkey and all audiences (${protocol})`, async () => {
        const vkey = freshKey();
        const c = await tenant("notifications", vkey, protocol);
        const capabilities = [
            { model: "claude-x", supportsVision: true, maxTokens: 200000, extension: EXTENSION },
            { model: "claude-y", supportsVision: false, maxTokens: 100000 },
        ];
        const cases = [
            ["ProviderHealthChanged", { provider: "openai", status: "degraded", message: "slow" }, ["openai", "degraded", "slow"]],
            ["ProviderHealthChanged", { provider: "openai", status: "healthy" }, ["openai", "healthy", null]],
            ["ProviderHealthChanged", { provider: "anthropic", status: "unhealthy", message: "503" }, ["anthropic", "unhealthy", "503"]],
            [
                "RateLimitWarning",
                { endpoint: "/v1/chat/completions", remaining: 5, resetTime: TS2 },
                ["/v1/chat/completions", 5, TS2],
            ],
            [
                "SystemAnnouncement",
                { title: "Maintenance", message: "Tonight 02:00 UTC", severity: "info" },
                ["Maintenance", "Tonight 02:00 UTC", "info"],
            ],
            ["ServiceDegraded", { service: "image-generation", reason: "backlog" }, ["image-generation", "backlog"]],
            ["ServiceRestored", { service: "image-generation" }, ["image-generation"]],
            ["ModelMappingChanged", { model: "gpt-4o", newProvider: "azure" }, ["gpt-4o", "azure"]],
            ["ModelMappingChanged", { model: "gpt-4o" }, ["gpt-4o", null]],
            [
                "ModelCapabilitiesDiscovered",
                { provider: "anthropic", capabilities },
                ["anthropic", capabilities],
            ],
            ["ModelAvailabilityChanged", { model: "gpt-4o", isAvailable: false }, ["gpt-4o", false]],
            ["ModelAvailabilityChanged", { model: "gpt-4o", isAvailable: true }, ["gpt-4o", true]],
        ];
        for (const audience of [`vkey.${vkey}`, "all"]) {
            for (const [event, body, expected] of cases) {
                await expectEvent(c, "notifications", `${audience}.${event}`, event, body, expected);
            }
        }
    });

    // -----------------------------------------------------------------------------------------
    // spend
    // -----------------------------------------------------------------------------------------
    test(`spend: SpendUpdate (data), BudgetAlert and SpendSummary (x, data without x), UnusualSpendingAlert (analysis) (${protocol})`, async () => {
        const vkey = freshKey();
        const c = await tenant("spend", vkey, protocol);
        const rk = (e) => `vkey.${vkey}.${e}`;

        // Under every threshold: no derived alert interferes.
        const update = {
            amount: 0.0125,
            totalSpend: 12.5,
            budget: 100,
            budgetRemaining: 87.5,
            budgetUtilization: 0.125,
            provider: "openai",
            model: "gpt-4o",
            requestId: "req-1",
            timestamp: TS,
            extension: EXTENSION,
        };
        await expectEvent(c, "spend", rk("SpendUpdate"), "SpendUpdate", update, [update]);
        const minimalUpdate = { amount: 1, totalSpend: 2 };
        await expectEvent(c, "spend", rk("SpendUpdate"), "SpendUpdate", minimalUpdate, [minimalUpdate]);

        const alert = {
            alertType: "budget_75_percent",
            threshold: 0.75,
            currentSpend: 76,
            budget: 100,
            percentageUsed: 76,
            severity: "warning",
            message: "76% of the budget used",
            timestamp: TS,
            extension: EXTENSION,
        };
        await expectEvent(c, "spend", rk("BudgetAlert"), "BudgetAlert", alert, [
            "budget_75_percent",
            without(alert, "alertType"),
        ]);

        const summary = {
            period: "daily",
            totalSpend: 12.5,
            requestCount: 340,
            byModel: { "gpt-4o": 10, "claude-x": 2.5 },
            startDate: TS,
            endDate: TS2,
            extension: EXTENSION,
        };
        await expectEvent(c, "spend", rk("SpendSummary"), "SpendSummary", summary, ["daily", without(summary, "period")]);
        await expectEvent(c, "spend", rk("SpendSummary"), "SpendSummary", { period: "weekly" }, ["weekly", {}]);

        const analysis = {
            activityType: "spike",
            description: "Spend rate 13x the 7-day average",
            currentRate: 5.2,
            normalRate: 0.4,
            deviationPercentage: 1200,
            recommendations: ["Check for runaway loops", "Set a budget"],
            detectedAt: TS2,
            extension: EXTENSION,
        };
        await expectEvent(c, "spend", rk("UnusualSpendingAlert"), "UnusualSpendingAlert", analysis, [analysis]);
    });

    // -----------------------------------------------------------------------------------------
    // webhooks
    // -----------------------------------------------------------------------------------------
    test(`webhooks: every event sends (url, data without url) (${protocol})`, async () => {
        const vkey = freshKey();
        const c = await tenant("webhooks", vkey, protocol);
        const url = `https://hooks.example.com/${uid("w")}/receive?x=1`;
        assert.ok(isVoid(await c.invoke("SubscribeToWebhooks", [url])));
        const bodies = {
            DeliveryAttempted: {
                url,
                webhookId: "wh-1",
                eventType: "task.completed",
                attemptNumber: 1,
                timestamp: TS,
                extension: EXTENSION,
            },
            DeliverySucceeded: { url, webhookId: "wh-1", statusCode: 200, responseTimeMs: 123, timestamp: TS2 },
            DeliveryFailed: {
                url,
                webhookId: "wh-1",
                statusCode: 502,
                error: "Bad Gateway",
                isRetryable: true,
                timestamp: TS2,
                extension: EXTENSION,
            },
            RetryScheduled: { url, webhookId: "wh-1", attemptNumber: 2, nextRetryAt: TS2, delaySeconds: 30 },
        };
        for (const [event, body] of Object.entries(bodies)) {
            await expectEvent(c, "webhooks", `vkey.${vkey}.${event}`, event, body, [url, without(body, "url")]);
        }
        await expectEvent(c, "webhooks", `vkey.${vkey}.DeliveryAttempted`, "DeliveryAttempted", { url }, [url, {}]);
    });

    // -----------------------------------------------------------------------------------------
    // admin-notifications
    // -----------------------------------------------------------------------------------------
    test(`admin-notifications: every event with exactly its argument list (${protocol})`, async () => {
        const c = await admin(protocol);
        const provider = uid("prov");
        await expectEvent(
            c,
            "admin-notifications",
            "admin.ProviderHealthStatus",
            "ProviderHealthStatus",
            { provider, status: "unhealthy", message: "HTTP 503", checkedAt: TS },
            [provider, "unhealthy", "HTTP 503", TS],
        );
        await expectEvent(
            c,
            "admin-notifications",
            "admin.ProviderHealthStatus",
            "ProviderHealthStatus",
            { provider, status: "healthy", checkedAt: TS2 },
            [provider, "healthy", null, TS2],
        );
        // A fresh key id: VirtualKeyDeleted revokes it, which must not disturb other tests.
        const keyId = Number(freshKey());
        const created = { virtualKeyId: keyId, keyName: "ci-key", isEnabled: true, createdAt: TS, extension: EXTENSION };
        await expectEvent(c, "admin-notifications", "admin.VirtualKeyCreated", "VirtualKeyCreated", created, [created]);
        const updated = { virtualKeyId: keyId, isEnabled: true, changedFields: ["keyName"], updatedAt: TS2 };
        await expectEvent(c, "admin-notifications", "admin.VirtualKeyUpdated", "VirtualKeyUpdated", updated, [updated]);
        await expectEvent(
            c,
            "admin-notifications",
            "admin.VirtualKeyDeleted",
            "VirtualKeyDeleted",
            { virtualKeyId: keyId },
            [keyId],
        );
        const alert = {
            severity: "critical",
            title: "Database failover",
            message: "Primary unreachable",
            source: "postgres",
            timestamp: TS,
            extension: EXTENSION,
        };
        await expectEvent(c, "admin-notifications", "admin.SystemAlert", "SystemAlert", alert, [alert]);
    });

    // -----------------------------------------------------------------------------------------
    // client-callable methods
    // -----------------------------------------------------------------------------------------
    test(`tasks / video / image methods: void results, ids validated, Unsubscribe too (${protocol})`, async () => {
        const BAD = ["", "has space", "slash/x", "dot.dot", "a".repeat(129), "ünïcode"];
        const GOOD = ["a", "A-z_0:9", "x".repeat(128)];
        const plan = [
            ["tasks", "SubscribeToTask", "Invalid task ID"],
            ["tasks", "UnsubscribeFromTask", "Invalid task ID"],
            ["tasks", "SubscribeToTaskType", "Invalid task type"],
            ["tasks", "UnsubscribeFromTaskType", "Invalid task type"],
            ["video-generation", "SubscribeToRequest", "Invalid request ID"],
            ["video-generation", "UnsubscribeFromRequest", "Invalid request ID"],
            ["image-generation", "SubscribeToTask", "Invalid task ID"],
            ["image-generation", "UnsubscribeFromTask", "Invalid task ID"],
        ];
        // One connection per method: 9 invocations stay within the default invocation burst (20).
        for (const [hub, method, text] of plan) {
            const c = await tenant(hub, freshKey(), protocol);
            for (const good of GOOD) {
                assert.ok(isVoid(await c.invoke(method, good)), `${hub} ${method}(${good}) returns void`);
            }
            for (const bad of BAD) {
                assert.equal(
                    (await invokeError(c, method, bad)).message,
                    HUB_EXCEPTION(method, text),
                    `${hub} ${method}(${JSON.stringify(bad)})`,
                );
            }
            // Method names match case-insensitively.
            assert.ok(isVoid(await c.invoke(method.toLowerCase(), GOOD[0])));
            await c.stop();
        }
    });

    test(`notifications: UpdatePreferences returns the effective preferences and sends PreferencesUpdated (${protocol})`, async () => {
        const c = await tenant("notifications", freshKey(), protocol);
        const prefs = { enabledEvents: ["ServiceDegraded", "SystemAnnouncement"], minimumSeverity: "warning" };
        const pushed = waitFor(c, "PreferencesUpdated");
        assert.deepEqual(await c.invoke("UpdatePreferences", prefs), prefs);
        assert.deepEqual(await pushed, [prefs]);

        const all = { enabledEvents: null, minimumSeverity: "info" };
        const pushed2 = waitFor(c, "PreferencesUpdated");
        assert.deepEqual(await c.invoke("UpdatePreferences", all), all);
        assert.deepEqual(await pushed2, [all]);

        for (const bad of [
            { enabledEvents: null, minimumSeverity: "loud" },
            { enabledEvents: ["ServiceDegraded"], minimumSeverity: "verbose" },
        ]) {
            assert.equal(
                (await invokeError(c, "UpdatePreferences", bad)).message,
                HUB_EXCEPTION("UpdatePreferences", "Invalid preferences"),
                JSON.stringify(bad),
            );
        }
    });

    test(`webhooks: Subscribe/Unsubscribe void, URL validation, RequestStatistics object (${protocol})`, async () => {
        const c = await tenant("webhooks", freshKey(), protocol);
        const url = `https://hooks.example.com/${uid("m")}`;
        assert.ok(isVoid(await c.invoke("SubscribeToWebhooks", [url, "http://localhost:8080/hook"])));
        assert.ok(isVoid(await c.invoke("UnsubscribeFromWebhooks", [url])));
        for (const method of ["SubscribeToWebhooks", "UnsubscribeFromWebhooks"]) {
            for (const bad of ["not a url", "/relative/path", "ftp://files.example.com/x", "mailto:a@example.com", ""]) {
                assert.equal(
                    (await invokeError(c, method, [url, bad])).message,
                    HUB_EXCEPTION(method, "Invalid webhook URL"),
                    `${method}([..., ${JSON.stringify(bad)}])`,
                );
            }
        }
        const stats = await c.invoke("RequestStatistics", url);
        assert.equal(typeof stats, "object");
        assert.deepEqual(
            Object.keys(stats).sort(),
            [
                "attempts",
                "averageResponseTimeMs",
                "failures",
                "lastFailureAt",
                "lastSuccessAt",
                "retriesScheduled",
                "since",
                "successRate",
                "successes",
                "url",
            ],
        );
    });

    test(`admin methods: void results, virtualKeyId as number or string, ids validated, RefreshProviderHealth (${protocol})`, async () => {
        let c = await admin(protocol);
        // A fresh connection per group of invocations: they stay within the default invocation burst (20).
        const fresh = async () => {
            await c.stop();
            c = await admin(protocol);
        };
        for (const [method, arg] of [
            ["SubscribeToVirtualKey", 42],
            ["SubscribeToVirtualKey", "42"],
            ["UnsubscribeFromVirtualKey", 42],
            ["UnsubscribeFromVirtualKey", "42"],
            ["SubscribeToProvider", "openai"],
            ["UnsubscribeFromProvider", "openai"],
        ]) {
            assert.ok(isVoid(await c.invoke(method, arg)), `${method}(${JSON.stringify(arg)}) returns void`);
        }
        for (const method of ["SubscribeToVirtualKey", "UnsubscribeFromVirtualKey"]) {
            await fresh();
            for (const bad of ["bad/id", "", "a".repeat(65), "has space", "dot.dot"]) {
                assert.equal(
                    (await invokeError(c, method, bad)).message,
                    HUB_EXCEPTION(method, "Invalid virtual key ID"),
                    `${method}(${JSON.stringify(bad)})`,
                );
            }
        }
        for (const method of ["SubscribeToProvider", "UnsubscribeFromProvider"]) {
            await fresh();
            for (const bad of ["bad name", "", "slash/x", "a".repeat(129)]) {
                assert.equal(
                    (await invokeError(c, method, bad)).message,
                    HUB_EXCEPTION(method, "Invalid provider name"),
                    `${method}(${JSON.stringify(bad)})`,
                );
            }
        }
        assert.ok(Array.isArray(await c.invoke("RefreshProviderHealth")), "RefreshProviderHealth returns an array");
        await c.stop();
    });

    test(`backend-only operations answer Method does not exist (${protocol})`, async () => {
        const spend = await tenant("spend", freshKey(), protocol);
        for (const m of ["SendSpendUpdate", "SendBudgetAlert", "SendSpendSummary", "SendUnusualSpendingAlert"]) {
            assert.equal((await invokeError(spend, m, {})).message, NO_SUCH_METHOD(m), m);
        }
        // The spend hub has no client-callable method at all.
        assert.equal((await invokeError(spend, "SubscribeToTask", "x")).message, NO_SUCH_METHOD("SubscribeToTask"));
        const hooks = await tenant("webhooks", freshKey(), protocol);
        for (const m of [
            "BroadcastDeliveryAttempt",
            "BroadcastDeliverySuccess",
            "BroadcastDeliveryFailure",
            "BroadcastRetryScheduled",
        ]) {
            assert.equal((await invokeError(hooks, m, "https://x.example.com/", {})).message, NO_SUCH_METHOD(m), m);
        }
        // Methods of another hub are not callable either.
        const notif = await tenant("notifications", freshKey(), protocol);
        assert.equal((await invokeError(notif, "SubscribeToTask", "x")).message, NO_SUCH_METHOD("SubscribeToTask"));
        const adm = await admin(protocol);
        assert.equal((await invokeError(adm, "SubscribeToTask", "x")).message, NO_SUCH_METHOD("SubscribeToTask"));
        assert.equal((await invokeError(adm, "SendSpendUpdate", {})).message, NO_SUCH_METHOD("SendSpendUpdate"));
    });
}
