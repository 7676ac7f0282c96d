// The official ACP TypeScript SDK (@agentclientprotocol/sdk 2.x) drives `warren acp` as an editor
// would, and prints ONE line of JSON observations on stdout for tests/test_acp_ts_sdk.py to judge.
// It asserts nothing itself: a scenario that throws is recorded as {error} and the run goes on;
// only a broken set-up (bad arguments, the agent not starting, the global deadline) exits non-zero.
//
// Usage: node judge.mjs '<agent argv as a JSON array>' <work dir>
//   The agent argv is completed with `--ephemeral` or `--db <work dir>/warren.db` here.
//   JUDGE_MCP_SERVER: JSON of an ACP McpServerStdio for the tool-call scenario (skipped if unset).
//   JUDGE_STDERR: a file for the agents' stderr (default: ignored).

import { spawn } from "node:child_process";
import { openSync, closeSync } from "node:fs";
import { Readable, Writable } from "node:stream";
import * as acp from "@agentclientprotocol/sdk";

const DEADLINE_MS = 25_000; // the whole run
const WAIT_MS = 10_000; // any single wait
const STREAMED_TEXT = "Hello from Warren's scripted provider, streamed in small pieces.";
const SLOW_STEP = { text: "x".repeat(200), chunk_chars: 1, delay_ms: 20 };

const [agentArgvJson, workDir] = process.argv.slice(2);
if (!agentArgvJson || !workDir) {
  console.error("usage: node judge.mjs '<agent argv JSON>' <work dir>");
  process.exit(2);
}
const agentArgv = JSON.parse(agentArgvJson);
const mcpServer = process.env.JUDGE_MCP_SERVER ? JSON.parse(process.env.JUDGE_MCP_SERVER) : null;
const stderrFd = process.env.JUDGE_STDERR ? openSync(process.env.JUDGE_STDERR, "a") : "ignore";
const dbPath = `${workDir}/warren.db`;

const watchdog = setTimeout(() => {
  console.error(`judge: the run took longer than ${DEADLINE_MS} ms`);
  process.exit(3);
}, DEADLINE_MS);

function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function errorOf(e) {
  if (e instanceof acp.RequestError || (e && typeof e.code === "number")) {
    return { code: e.code, message: e.message, data: e.data ?? null };
  }
  return { thrown: String(e && e.stack ? e.stack : e) };
}

async function scenario(obs, name, fn) {
  try {
    obs[name] = await fn();
  } catch (e) {
    obs[name] = { error: errorOf(e) };
  }
}

const scripted = (...steps) => ({ warren: { provider: "scripted", provider_params: { script: steps } } });
const toolStep = (id, text) => ({ tool_calls: [{ name: "t__echo", arguments: { text }, id }] });

// ---------------------------------------------------------------- one agent process, one editor

class Editor {
  constructor(label, { db }) {
    this.label = label;
    this.incoming = []; // every message the agent wrote, in order, as the SDK received it
    this.sentMethods = {}; // request id -> method
    this.updates = []; // session/update params, in order, through the SDK's typed handler
    this.permissionRequests = [];
    this.permissionAnswers = []; // kinds to pick, in order; default allow_once
    const argv = [...agentArgv, ...(db ? ["--db", dbPath] : ["--ephemeral"])];
    this.child = spawn(argv[0], argv.slice(1), { stdio: ["pipe", "pipe", stderrFd] });
    this.exited = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
    this.child.once("error", (e) => {
      console.error(`judge: could not start the agent (${argv.join(" ")}): ${e}`);
      process.exit(4);
    });
  }

  stream() {
    const base = acp.ndJsonStream(Writable.toWeb(this.child.stdin), Readable.toWeb(this.child.stdout));
    const editor = this;
    const tapIn = new TransformStream({
      transform(msg, ctl) {
        editor.incoming.push(msg);
        ctl.enqueue(msg);
      },
    });
    const tapOut = new TransformStream({
      transform(msg, ctl) {
        if (msg && msg.method && msg.id !== undefined) editor.sentMethods[msg.id] = msg.method;
        ctl.enqueue(msg);
      },
    });
    tapOut.readable.pipeTo(base.writable).catch(() => {});
    return { writable: tapOut.writable, readable: base.readable.pipeThrough(tapIn) };
  }

  app() {
    return acp
      .client({ name: "acp-ts-judge" })
      .onRequest(acp.methods.client.session.requestPermission, async ({ params }) => {
        this.permissionRequests.push(params);
        const kind = this.permissionAnswers.shift() ?? "allow_once";
        const option = params.options.find((o) => o.kind === kind);
        if (!option) return { outcome: { outcome: "cancelled" } };
        return { outcome: { outcome: "selected", optionId: option.optionId } };
      })
      .onNotification(acp.methods.client.session.update, ({ params }) => {
        this.updates.push(params);
      });
  }

  async run(op) {
    try {
      return await this.app().connectWith(this.stream(), (ctx) => op(ctx, this));
    } finally {
      try {
        this.child.stdin.end();
      } catch {}
      let timer;
      const exit = await Promise.race([this.exited, new Promise((resolve) => (timer = setTimeout(resolve, 5000, null)))]);
      clearTimeout(timer);
      if (exit === null) this.child.kill("SIGKILL");
    }
  }

  // the index in `incoming` of the response to the last request of `method`
  responseIndex(method) {
    const ids = Object.entries(this.sentMethods).filter(([, m]) => m === method).map(([id]) => id);
    const id = ids[ids.length - 1];
    return this.incoming.findIndex((m) => !("method" in m) && String(m.id) === id);
  }

  updatesBetween(start, end, sessionId) {
    return this.incoming
      .slice(start, end)
      .filter((m) => m.method === "session/update" && m.params.sessionId === sessionId)
      .map((m) => m.params.update);
  }

  of(sessionId, kind) {
    return this.updates.filter((p) => p.sessionId === sessionId && p.update.sessionUpdate === kind).map((p) => p.update);
  }

  wire() {
    return { incoming: this.incoming, sentMethods: this.sentMethods };
  }
}

async function initialize(ctx, protocolVersion = 1) {
  return within(
    ctx.request(acp.methods.agent.initialize, {
      protocolVersion,
      clientCapabilities: {},
      clientInfo: { name: "acp-ts-judge", version: "1" },
    }),
    "initialize",
  );
}

// Reads an ActiveSession's messages until its prompt stops; returns [updates, stop].
async function readTurn(session) {
  const updates = [];
  for (;;) {
    const message = await within(session.nextUpdate(), "the next update");
    if (message.kind === "stop") return [updates, message.response];
    updates.push(message.update);
  }
}

const textOf = (updates, kind = "agent_message_chunk") =>
  updates.filter((u) => u.sessionUpdate === kind && u.content.type === "text").map((u) => u.content.text).join("");

// ---------------------------------------------------------------- the scenarios

const obs = { sdk: "@agentclientprotocol/sdk", node: process.version };
const cwd = workDir;

// a. initialize with an unsupported version, in its own process
await new Editor("init65535", { db: false }).run(async (ctx, ed) => {
  await scenario(obs, "initialize_65535", async () => {
    const answer = await initialize(ctx, 65535);
    return { protocolVersion: answer.protocolVersion };
  });
  obs.wire_init65535 = ed.wire();
});

// the main editor session on a database file
const ids = {};
await new Editor("main", { db: true }).run(async (ctx, ed) => {
  await scenario(obs, "initialize", async () => {
    const answer = await initialize(ctx, 1);
    return { protocolVersion: answer.protocolVersion, agentCapabilities: answer.agentCapabilities, agentInfo: answer.agentInfo ?? null };
  });

  // b, c. new + streaming through the SDK's ActiveSession
  await scenario(obs, "streaming", async () => {
    const session = await within(
      ctx.buildSession({ cwd, mcpServers: [], _meta: scripted({ text: STREAMED_TEXT, chunk_chars: 5 }) }).start(),
      "session/new",
    );
    ids.streaming = session.sessionId;
    const other = await within(ctx.request(acp.methods.agent.session.new, { cwd, mcpServers: [], _meta: scripted() }), "session/new");
    const prompting = session.prompt("Say hello");
    const [updates, stop] = await readTurn(session);
    await within(prompting, "session/prompt");
    session.dispose();
    const chunks = updates.filter((u) => u.sessionUpdate === "agent_message_chunk");
    return {
      sessionId: session.sessionId,
      otherSessionId: other.sessionId,
      configOptions: session.newSessionResponse.configOptions ?? null,
      chunkTexts: chunks.map((u) => u.content.text),
      messageIds: chunks.map((u) => u.messageId ?? null),
      kinds: updates.map((u) => u.sessionUpdate),
      titles: updates.filter((u) => u.sessionUpdate === "session_info_update").map((u) => u.title ?? null),
      stopReason: stop.stopReason,
      usage: stop.usage ?? null,
    };
  });

  // e. cancel mid-turn
  await scenario(obs, "cancel", async () => {
    const session = await within(ctx.buildSession({ cwd, mcpServers: [], _meta: scripted(SLOW_STEP) }).start(), "session/new");
    const prompting = session.prompt("talk slowly");
    const seen = [];
    for (;;) {
      const message = await within(session.nextUpdate(), "the first chunk");
      if (message.kind === "stop") throw new Error(`the slow prompt stopped before any chunk: ${JSON.stringify(message.response)}`);
      seen.push(message.update);
      if (message.update.sessionUpdate === "agent_message_chunk") break;
    }
    await ctx.notify(acp.methods.agent.session.cancel, { sessionId: session.sessionId });
    const [rest, stop] = await readTurn(session);
    const response = await within(prompting, "the cancelled prompt's answer");
    const answered = ed.responseIndex("session/prompt");
    await sleep(300);
    const after = ed.updatesBetween(answered + 1, ed.incoming.length, session.sessionId);
    session.dispose();
    return {
      stopReason: stop.stopReason,
      promptStopReason: response.stopReason,
      streamedChars: textOf([...seen, ...rest]).length,
      updatesAfterAnswer: after.length,
    };
  });

  // f. a late cancel, then prompts that must complete
  await scenario(obs, "late_cancel", async () => {
    const session = await within(ctx.buildSession({ cwd, mcpServers: [], _meta: scripted({ text: "first answer" }) }).start(), "session/new");
    ids.late = session.sessionId;
    const stops = [];
    const texts = [];
    for (const [i, text] of ["one", "two", "three"].entries()) {
      if (i > 0) await ctx.notify(acp.methods.agent.session.cancel, { sessionId: session.sessionId });
      if (i === 2) await sleep(100); // the cancel surely read before this prompt
      const prompting = session.prompt(text);
      const [updates, stop] = await readTurn(session);
      await within(prompting, "session/prompt");
      stops.push(stop.stopReason);
      texts.push(textOf(updates));
    }
    session.dispose();
    return { stopReasons: stops, texts };
  });

  // d. a tool call through an MCP server, with permission
  if (mcpServer) {
    await scenario(obs, "tool_call", async () => {
      ed.permissionAnswers.push("allow_always", "reject_once");
      const made = await within(
        ctx.request(acp.methods.agent.session.new, {
          cwd,
          mcpServers: [mcpServer],
          _meta: scripted(toolStep("call-1", "hi"), { text: "done" }, toolStep("call-2", "again"), { text: "done again" }),
        }),
        "session/new with an MCP server",
      );
      ids.tool = made.sessionId;
      const first = await within(
        ctx.request(acp.methods.agent.session.prompt, { sessionId: made.sessionId, prompt: [{ type: "text", text: "use the tool" }] }),
        "the tool prompt",
      );
      const permissionsAfterFirst = ed.permissionRequests.length;
      const second = await within(
        ctx.request(acp.methods.agent.session.prompt, { sessionId: made.sessionId, prompt: [{ type: "text", text: "again" }] }),
        "the second tool prompt",
      );
      const permissionsAfterSecond = ed.permissionRequests.length;
      const rejected = await within(
        ctx.request(acp.methods.agent.session.new, {
          cwd,
          mcpServers: [mcpServer],
          _meta: scripted(toolStep("call-3", "no"), { text: "ok, I won't" }),
        }),
        "session/new with an MCP server",
      );
      const third = await within(
        ctx.request(acp.methods.agent.session.prompt, { sessionId: rejected.sessionId, prompt: [{ type: "text", text: "try it" }] }),
        "the rejected tool prompt",
      );
      const toolUpdates = (sid) =>
        ed.updates
          .filter((p) => p.sessionId === sid && (p.update.sessionUpdate === "tool_call" || p.update.sessionUpdate === "tool_call_update"))
          .map((p) => p.update);
      // where the permission request sits among call-1's updates on the wire
      const order = ed.incoming
        .filter(
          (m) =>
            m.method === "session/request_permission" ||
            (m.method === "session/update" && m.params.update.toolCallId === "call-1"),
        )
        .map((m) => (m.method === "session/request_permission" ? "permission" : m.params.update.status ?? m.params.update.sessionUpdate));
      return {
        stopReasons: [first.stopReason, second.stopReason, third.stopReason],
        permissionsAfterFirst,
        permissionsAfterSecond,
        permissionsAfterReject: ed.permissionRequests.length,
        permissionRequests: ed.permissionRequests,
        allowed: toolUpdates(made.sessionId),
        rejected: toolUpdates(rejected.sessionId),
        order,
        text: textOf(ed.updates.filter((p) => p.sessionId === made.sessionId).map((p) => p.update)),
      };
    });
  }

  // g. list, with a cwd filter and the cursor
  await scenario(obs, "list", async () => {
    const many = `${workDir}/many`;
    for (let i = 0; i < 52; i++) {
      await within(ctx.request(acp.methods.agent.session.new, { cwd: many, mcpServers: [], _meta: scripted() }), "session/new");
    }
    const mine = await within(ctx.request(acp.methods.agent.session.list, { cwd }), "session/list");
    const nobody = await within(ctx.request(acp.methods.agent.session.list, { cwd: `${workDir}/nobody` }), "session/list");
    const pages = [];
    let cursor;
    for (let i = 0; i < 5; i++) {
      const page = await within(ctx.request(acp.methods.agent.session.list, cursor ? { cwd: many, cursor } : { cwd: many }), "session/list");
      pages.push(page.sessions.map((s) => s.sessionId));
      cursor = page.nextCursor;
      if (!cursor) break;
    }
    return { mine: mine.sessions, nobody: nobody.sessions, pageSizes: pages.map((p) => p.length), paged: pages.flat() };
  });

  // j. errors
  await scenario(obs, "errors", async () => {
    const out = {};
    const attempt = async (name, promise) => {
      try {
        out[name] = { result: await within(promise, name) };
      } catch (e) {
        out[name] = errorOf(e);
      }
    };
    await attempt("audio", ctx.request(acp.methods.agent.session.prompt, {
      sessionId: ids.streaming,
      prompt: [{ type: "audio", data: "UklGRg==", mimeType: "audio/wav" }],
    }));
    await attempt("unknown_session", ctx.request(acp.methods.agent.session.prompt, {
      sessionId: "no-such-session",
      prompt: [{ type: "text", text: "hello?" }],
    }));
    await attempt("warren_v1_method", ctx.request("session/read", { session_id: ids.streaming }));
    await attempt("still_serving", ctx.request(acp.methods.agent.session.prompt, {
      sessionId: ids.streaming,
      prompt: [{ type: "text", text: "still fine" }],
    }));
    return out;
  });
  obs.wire_main = ed.wire();
});

// h, i. load (replay), resume, close in a NEW agent process on the same database
await new Editor("reopened", { db: true }).run(async (ctx, ed) => {
  await initialize(ctx, 1);
  await scenario(obs, "load", async () => {
    const start = ed.incoming.length;
    const answer = await within(
      ctx.request(acp.methods.agent.session.load, { sessionId: ids.streaming, cwd, mcpServers: [] }),
      "session/load",
    );
    const answered = ed.responseIndex("session/load");
    const replay = ed.updatesBetween(start, answered, ids.streaming);
    let toolReplay = null;
    if (ids.tool) {
      const s = ed.incoming.length;
      await within(ctx.request(acp.methods.agent.session.load, { sessionId: ids.tool, cwd, mcpServers: mcpServer ? [mcpServer] : [] }), "session/load");
      toolReplay = ed.updatesBetween(s, ed.responseIndex("session/load"), ids.tool);
    }
    return { answer, rawResult: ed.incoming[answered].result, replay, toolReplay };
  });
  await scenario(obs, "resume_close", async () => {
    const start = ed.incoming.length;
    const answer = await within(ctx.request(acp.methods.agent.session.resume, { sessionId: ids.late, cwd }), "session/resume");
    const answered = ed.responseIndex("session/resume");
    const beforeAnswer = ed.updatesBetween(start, answered, ids.late);
    const prompted = await within(
      ctx.request(acp.methods.agent.session.prompt, { sessionId: ids.late, prompt: [{ type: "text", text: "continue" }] }),
      "session/prompt after resume",
    );
    const afterPrompt = ed.updatesBetween(answered + 1, ed.incoming.length, ids.late);
    const closed = await within(ctx.request(acp.methods.agent.session.close, { sessionId: ids.late }), "session/close");
    const rawClose = ed.incoming[ed.responseIndex("session/close")];
    const listed = await within(ctx.request(acp.methods.agent.session.list, { cwd }), "session/list");
    return {
      answer,
      historyBeforeAnswer: beforeAnswer.filter((u) => ["user_message_chunk", "agent_message_chunk", "agent_thought_chunk"].includes(u.sessionUpdate)),
      stopReason: prompted.stopReason,
      text: textOf(afterPrompt),
      closed,
      rawClose: rawClose.result ?? rawClose.error,
      listedAfterClose: listed.sessions.map((s) => s.sessionId).includes(ids.late),
    };
  });
  obs.wire_reopened = ed.wire();
});

obs.ids = ids;
obs.cwd = cwd;
clearTimeout(watchdog);
if (stderrFd !== "ignore") closeSync(stderrFd);
process.stdout.write(JSON.stringify(obs) + "\n");
