import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, waitFor, invokeError, uid, sleep, HubConnectionState } from "./harness.js";

const server = useServer();

const BINDING_FAILURE = (m) => `Failed to invoke '${m}' due to an error on the server.`;
const HUB_EXCEPTION = (m, text) => `An unexpected error occurred invoking '${m}' on the server. HubException: ${text}`;

async function client(protocol = "json") {
    const token = await server.mintToken({ vkey: "7" });
    return server.connect({ token, protocol });
}

/** The connection still works: an invocation completes and a published event arrives. */
async function assertUsable(c) {
    assert.equal(c.state, HubConnectionState.Connected);
    const taskId = uid("usable");
    await c.invoke("SubscribeToTask", taskId);
    const got = waitFor(c, "TaskProgress");
    await server.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "t", percentComplete: 5, message: "ok" });
    assert.deepEqual(await got, [taskId, 5, "ok"]);
}

for (const protocol of ["json", "messagepack"]) {
    test(`unknown method: exact error text, connection stays usable (${protocol})`, async () => {
        const c = await client(protocol);
        try {
            const err = await invokeError(c, "NoSuchMethod");
            assert.equal(
                err.message,
                "Failed to invoke 'NoSuchMethod' due to an error on the server. HubException: Method does not exist.",
            );
            const err2 = await invokeError(c, "NoSuchMethod", 1, "two");
            assert.equal(
                err2.message,
                "Failed to invoke 'NoSuchMethod' due to an error on the server. HubException: Method does not exist.",
            );
            await assertUsable(c);
        } finally {
            await c.stop();
        }
    });

    test(`wrong argument count: exact error text (${protocol})`, async () => {
        const c = await client(protocol);
        try {
            assert.equal((await invokeError(c, "SubscribeToTask")).message, BINDING_FAILURE("SubscribeToTask"));
            assert.equal(
                (await invokeError(c, "SubscribeToTask", "a", "b")).message,
                BINDING_FAILURE("SubscribeToTask"),
            );
            assert.equal(
                (await invokeError(c, "SubscribeToTaskType", "a", "b")).message,
                BINDING_FAILURE("SubscribeToTaskType"),
            );
            await assertUsable(c);
        } finally {
            await c.stop();
        }
    });

    test(`wrong argument type: exact error text (${protocol})`, async () => {
        const c = await client(protocol);
        try {
            assert.equal(
                (await invokeError(c, "SubscribeToTask", { id: "abc" })).message,
                BINDING_FAILURE("SubscribeToTask"),
            );
            assert.equal((await invokeError(c, "SubscribeToTask", ["abc"])).message, BINDING_FAILURE("SubscribeToTask"));
            assert.equal((await invokeError(c, "SubscribeToTask", 42)).message, BINDING_FAILURE("SubscribeToTask"));
            await assertUsable(c);
        } finally {
            await c.stop();
        }
    });
}

test("invalid task id / task type: HubException text", async () => {
    const c = await client();
    try {
        for (const bad of ["bad id!", "", "a".repeat(129), "slash/not/allowed", "dot.not.allowed", "ünïcode"]) {
            assert.equal(
                (await invokeError(c, "SubscribeToTask", bad)).message,
                HUB_EXCEPTION("SubscribeToTask", "Invalid task ID"),
                `SubscribeToTask(${JSON.stringify(bad)})`,
            );
        }
        assert.equal(
            (await invokeError(c, "UnsubscribeFromTask", "bad id!")).message,
            HUB_EXCEPTION("UnsubscribeFromTask", "Invalid task ID"),
        );
        assert.equal(
            (await invokeError(c, "SubscribeToTaskType", "bad type!")).message,
            HUB_EXCEPTION("SubscribeToTaskType", "Invalid task type"),
        );
        assert.equal(
            (await invokeError(c, "SubscribeToTaskType", "")).message,
            HUB_EXCEPTION("SubscribeToTaskType", "Invalid task type"),
        );
        assert.equal(
            (await invokeError(c, "UnsubscribeFromTaskType", "x".repeat(129))).message,
            HUB_EXCEPTION("UnsubscribeFromTaskType", "Invalid task type"),
        );

        // Positive controls: the boundaries of the id rule are accepted.
        for (const good of ["a", "A-z_0:9", "x".repeat(128)]) {
            const r = await c.invoke("SubscribeToTask", good);
            assert.ok(r === undefined || r === null, `SubscribeToTask(${JSON.stringify(good)}) is accepted`);
            const r2 = await c.invoke("SubscribeToTaskType", good);
            assert.ok(r2 === undefined || r2 === null, `SubscribeToTaskType(${JSON.stringify(good)}) is accepted`);
        }
        await assertUsable(c);
    } finally {
        await c.stop();
    }
});

test("method names match case-insensitively", async () => {
    const c = await client();
    try {
        const taskId = uid("case");
        const r = await c.invoke("subscribetotask", taskId);
        assert.ok(r === undefined || r === null);
        const got = waitFor(c, "TaskProgress");
        await server.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "t", percentComplete: 9, message: "ci" });
        assert.deepEqual(await got, [taskId, 9, "ci"]);
    } finally {
        await c.stop();
    }
});

test("fire-and-forget send of an unknown method does not break the connection", async () => {
    const c = await client();
    try {
        let closed = false;
        c.onclose(() => (closed = true));
        await c.send("NoSuchMethod", "x");
        await c.send("NoSuchMethod");
        await c.send("SubscribeToTask"); // wrong argument count, no invocation id: no reply either
        await sleep(300);
        assert.equal(closed, false, "connection was closed");
        await assertUsable(c);
        // A void hub method sent fire-and-forget takes effect.
        const taskId = uid("ff");
        await c.send("SubscribeToTask", taskId);
        const got = waitFor(c, "TaskProgress");
        // The subscription is effective once processed; dispatch is sequential, so an invoke after it
        // guarantees it was handled.
        await c.invoke("SubscribeToTask", uid("barrier"));
        await server.publish("tasks", "vkey.7.TaskProgress", { taskId, taskType: "t", percentComplete: 7 });
        assert.deepEqual(await got, [taskId, 7, null]);
        assert.equal(closed, false);
    } finally {
        await c.stop();
    }
});
