// Per-hub limits (contract section 10): limits.hubs.<hub>.invocations_per_second, .invocation_burst and
// .connections_per_key override the global ones for that hub, and only for it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useServer, uid, HubConnectionState } from "./harness.js";

const server = useServer({
    HUBCAST_LIMITS__CONNECTIONS_PER_KEY: "4",
    HUBCAST_LIMITS__INVOCATION_BURST: "20",
    HUBCAST_LIMITS__INVOCATIONS_PER_SECOND: "1",
    HUBCAST_LIMITS__HUBS__TASKS__INVOCATION_BURST: "3",
    // `_` stands for `-` in hub names: variable names cannot hold `-`.
    HUBCAST_LIMITS__HUBS__VIDEO_GENERATION__CONNECTIONS_PER_KEY: "1",
});

let keyCounter = 0;
function freshKey() {
    keyCounter += 1;
    return String(300000 + (process.pid % 1000) * 100 + keyCounter);
}

const RATE_LIMITED = /Rate limit exceeded/;

/** Invokes `method` `count` times at once; how many calls the limiter refused. */
async function refusedOf(connection, method, count) {
    const calls = Array.from({ length: count }, () => connection.invoke(method, uid("task")).then(
        () => false,
        (error) => RATE_LIMITED.test(String(error?.message ?? error)),
    ));
    return (await Promise.all(calls)).filter(Boolean).length;
}

test("invocation_burst of one hub: the tasks hub refuses past 3 calls, the image hub allows the global 20", async () => {
    const token = await server.mintToken({ vkey: freshKey() });
    const tasks = await server.connect({ hub: "tasks", token });
    const images = await server.connect({ hub: "image-generation", token });
    assert.equal(await refusedOf(tasks, "SubscribeToTask", 10), 7, "3 of 10 pass on tasks");
    assert.equal(await refusedOf(images, "SubscribeToTask", 10), 0, "the global burst of 20 on image-generation");
    await tasks.stop();
    await images.stop();
});

test("connections_per_key of one hub: a 2nd video-generation connection gets 429, other hubs keep the global 4", async () => {
    const token = await server.mintToken({ vkey: freshKey() });
    const bearer = { Authorization: `Bearer ${token}` };
    const video = await server.connect({ hub: "video-generation", token });
    const refused = await server.negotiate({ hub: "video-generation", headers: bearer });
    assert.equal(refused.status, 429, `2nd video-generation negotiate: ${refused.status} ${refused.text}`);
    const others = [];
    for (let i = 0; i < 4; i++) others.push(await server.connect({ hub: "tasks", token }));
    for (const c of [video, ...others]) assert.equal(c.state, HubConnectionState.Connected);
    assert.equal((await server.negotiate({ hub: "tasks", headers: bearer })).status, 429, "the 5th on tasks");
    await video.stop();
    const again = await server.connect({ hub: "video-generation", token });
    assert.equal(again.state, HubConnectionState.Connected, "the place is freed by a close");
    for (const c of [again, ...others]) await c.stop();
});
