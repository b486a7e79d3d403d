import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, waitFor, collect, uid, sleep } from "./harness.js";

const server = useServer();

const ABSENCE_MS = 500;

async function client(vkey = "7", protocol = "json") {
    const token = await server.mintToken({ vkey });
    return server.connect({ token, protocol });
}

function progress(vkey, taskId, taskType, percentComplete, message) {
    const payload = { taskId, taskType, percentComplete };
    if (message !== undefined) payload.message = message;
    return server.publish("tasks", `vkey.${vkey}.TaskProgress`, payload);
}

test("task-{taskId}: a subscriber of the task receives its events", async () => {
    const c = await client();
    try {
        const taskId = uid("task");
        await c.invoke("SubscribeToTask", taskId);
        const got = waitFor(c, "TaskProgress");
        await progress("7", taskId, uid("type"), 10, "ten");
        assert.deepEqual(await got, [taskId, 10, "ten"]);
    } finally {
        await c.stop();
    }
});

test("task-type-{taskType}: a subscriber of the type receives events of any task of that type", async () => {
    const c = await client();
    try {
        const taskType = uid("type");
        await c.invoke("SubscribeToTaskType", taskType);
        const seen = collect(c, "TaskProgress");
        const t1 = uid("task");
        const t2 = uid("task");
        const got1 = waitFor(c, "TaskProgress");
        await progress("7", t1, taskType, 20, "a");
        assert.deepEqual(await got1, [t1, 20, "a"]);
        const got2 = waitFor(c, "TaskProgress");
        await progress("7", t2, taskType, 30, "b");
        assert.deepEqual(await got2, [t2, 30, "b"]);
        // Positive control done; an event of another type must not arrive.
        const otherTask = uid("task");
        await progress("7", otherTask, uid("other-type"), 40, "c");
        const got3 = waitFor(c, "TaskProgress");
        await progress("7", t1, taskType, 50, "control");
        assert.deepEqual(await got3, [t1, 50, "control"]);
        await sleep(ABSENCE_MS);
        seen.stop();
        assert.deepEqual(
            seen.calls.map((a) => a[0]),
            [t1, t2, t1],
            "only the events of the subscribed type arrived",
        );
    } finally {
        await c.stop();
    }
});

for (const protocol of ["json", "messagepack"]) {
    test(`a connection in both task-{id} and task-type-{type} gets exactly one copy (${protocol})`, async () => {
        const c = await client("7", protocol);
        try {
            const taskId = uid("both");
            const taskType = uid("both-type");
            await c.invoke("SubscribeToTask", taskId);
            await c.invoke("SubscribeToTaskType", taskType);
            const seen = collect(c, "TaskProgress");
            const got = waitFor(c, "TaskProgress");
            await progress("7", taskId, taskType, 60, "once");
            assert.deepEqual(await got, [taskId, 60, "once"]);
            await sleep(ABSENCE_MS);
            seen.stop();
            assert.equal(seen.calls.length, 1, `exactly one copy, got ${JSON.stringify(seen.calls)}`);
        } finally {
            await c.stop();
        }
    });
}

test("UnsubscribeFromTask stops delivery; other subscriptions keep working", async () => {
    const c = await client();
    try {
        const taskId = uid("unsub");
        const control = uid("control");
        await c.invoke("SubscribeToTask", taskId);
        await c.invoke("SubscribeToTask", control);

        let got = waitFor(c, "TaskProgress");
        await progress("7", taskId, "x", 1, "before");
        assert.deepEqual(await got, [taskId, 1, "before"]);

        const result = await c.invoke("UnsubscribeFromTask", taskId);
        assert.ok(result === undefined || result === null, "UnsubscribeFromTask returns void");

        const seen = collect(c, "TaskProgress");
        await progress("7", taskId, "x", 2, "after");
        got = waitFor(c, "TaskProgress");
        await progress("7", control, "x", 3, "control");
        assert.deepEqual(await got, [control, 3, "control"]);
        await sleep(ABSENCE_MS);
        seen.stop();
        assert.deepEqual(seen.calls, [[control, 3, "control"]], "nothing for the unsubscribed task");
    } finally {
        await c.stop();
    }
});

test("UnsubscribeFromTaskType stops delivery; other subscriptions keep working", async () => {
    const c = await client();
    try {
        const taskType = uid("unsub-type");
        const control = uid("control");
        await c.invoke("SubscribeToTaskType", taskType);
        await c.invoke("SubscribeToTask", control);

        const t = uid("task");
        let got = waitFor(c, "TaskProgress");
        await progress("7", t, taskType, 1, "before");
        assert.deepEqual(await got, [t, 1, "before"]);

        const result = await c.invoke("UnsubscribeFromTaskType", taskType);
        assert.ok(result === undefined || result === null, "UnsubscribeFromTaskType returns void");

        const seen = collect(c, "TaskProgress");
        await progress("7", t, taskType, 2, "after");
        got = waitFor(c, "TaskProgress");
        await progress("7", control, "y", 3, "control");
        assert.deepEqual(await got, [control, 3, "control"]);
        await sleep(ABSENCE_MS);
        seen.stop();
        assert.deepEqual(seen.calls, [[control, 3, "control"]], "nothing for the unsubscribed type");
    } finally {
        await c.stop();
    }
});

test("groups are per virtual key: key 9 never receives key 7's events for the same task id", async () => {
    const c7 = await client("7");
    const c9 = await client("9");
    try {
        const taskId = uid("shared");
        const taskType = uid("shared-type");
        await c7.invoke("SubscribeToTask", taskId);
        await c9.invoke("SubscribeToTask", taskId);
        await c7.invoke("SubscribeToTaskType", taskType);
        await c9.invoke("SubscribeToTaskType", taskType);

        const seen7 = collect(c7, "TaskProgress");
        const seen9 = collect(c9, "TaskProgress");

        // Key 7's event reaches the key-7 client (positive control) and not the key-9 client.
        const got7 = waitFor(c7, "TaskProgress");
        await progress("7", taskId, taskType, 70, "for seven");
        assert.deepEqual(await got7, [taskId, 70, "for seven"]);
        await sleep(ABSENCE_MS);
        assert.deepEqual(seen9.calls, [], "key 9 received key 7's event");

        // And the other way round.
        const got9 = waitFor(c9, "TaskProgress");
        await progress("9", taskId, taskType, 90, "for nine");
        assert.deepEqual(await got9, [taskId, 90, "for nine"]);
        await sleep(ABSENCE_MS);
        seen7.stop();
        seen9.stop();
        assert.deepEqual(seen7.calls, [[taskId, 70, "for seven"]], "key 7 received only its own event");
        assert.deepEqual(seen9.calls, [[taskId, 90, "for nine"]], "key 9 received only its own event");
    } finally {
        await c7.stop();
        await c9.stop();
    }
});

// The six task events with their exact argument lists, with and without optional fields.
function taskEventCases(taskId, taskType) {
    return [
        {
            event: "TaskStarted",
            payload: { taskId, taskType, metadata: { model: "m1", priority: 2 } },
            args: [taskId, taskType, { model: "m1", priority: 2 }],
        },
        { event: "TaskStarted", payload: { taskId, taskType }, args: [taskId, taskType, null] },
        {
            event: "TaskProgress",
            payload: { taskId, taskType, percentComplete: 42, message: "working" },
            args: [taskId, 42, "working"],
        },
        { event: "TaskProgress", payload: { taskId, taskType, percentComplete: 0 }, args: [taskId, 0, null] },
        {
            event: "TaskCompleted",
            payload: { taskId, taskType, result: { url: "https://example.com/out.png", items: [1, 2] } },
            args: [taskId, { url: "https://example.com/out.png", items: [1, 2] }],
        },
        { event: "TaskCompleted", payload: { taskId, taskType }, args: [taskId, null] },
        {
            event: "TaskFailed",
            payload: { taskId, taskType, error: "boom", details: "stack trace here" },
            args: [taskId, "boom", "stack trace here"],
        },
        { event: "TaskFailed", payload: { taskId, taskType, error: "boom" }, args: [taskId, "boom", null] },
        {
            event: "TaskCancelled",
            payload: { taskId, taskType, reason: "user request" },
            args: [taskId, "user request"],
        },
        { event: "TaskCancelled", payload: { taskId, taskType }, args: [taskId, null] },
        { event: "TaskTimedOut", payload: { taskId, taskType }, args: [taskId] },
    ];
}

for (const protocol of ["json", "messagepack"]) {
    test(`all six task events arrive with their exact argument lists (${protocol})`, async () => {
        const c = await client("7", protocol);
        try {
            const taskId = uid("six");
            const taskType = uid("six-type");
            await c.invoke("SubscribeToTask", taskId);
            for (const { event, payload, args } of taskEventCases(taskId, taskType)) {
                const got = waitFor(c, event);
                await server.publish("tasks", `vkey.7.${event}`, payload);
                assert.deepEqual(await got, args, `${event} ${JSON.stringify(payload)}`);
            }
        } finally {
            await c.stop();
        }
    });
}
