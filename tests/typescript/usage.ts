// Must compile under `tsc --noEmit --strict` (tests/test_typescript.py): how a plugin uses
// schemas/typescript/warren-protocol.d.ts. Lines marked @ts-expect-error must NOT compile.
import type {
  DaemonMessage,
  ErrorCode,
  EventMap,
  MethodName,
  Methods,
  ParamsOf,
  RequestFunction,
  ResultOf,
  SessionEventParams,
  ServerRequestResponse,
  WarrenEvent,
  WarrenRequest,
  WarrenResponse,
} from "../../schemas/typescript/warren-protocol";

declare const request: RequestFunction;

// A typed request<M>() written against the method map.
async function call<M extends MethodName>(method: M, params: Methods[M]["params"]): Promise<Methods[M]["result"]> {
  return request(method, params);
}

export async function streamOneTurn(prompt: string): Promise<string> {
  const init = await call("initialize", { protocol_version: 1, client_info: { name: "usage.ts", version: "1" } });
  const methods: string[] = init.capabilities.methods;
  const maxLine: number = init.limits.max_line_bytes;
  void methods, maxLine;

  const created = await request("session/create", {
    initial_turn: "defer",
    provider: "scripted",
    provider_params: { script: [{ text: "hello", chunk_chars: 2 }] },
    labels: { editor: "usage.ts" },
  });
  const sessionId: string = created.session_id;
  const turn = await request("turn/start", {
    session_id: sessionId,
    prompt: [{ type: "text", text: prompt }, { type: "image", mime_type: "image/png", data: "iVBOR" }],
    when_busy: "queue",
  });
  if (turn.stop_reason === "tool_use") {
    for (const call of turn.pending_tool_calls) {
      await request("session/stage_tool_results", {
        session_id: sessionId,
        results: [{ tool_use_id: call.tool_use_id, content: JSON.stringify(call.arguments) }],
      });
    }
  }
  const history = await request("session/history", { session_id: sessionId, limit: 10 });
  for (const message of history.messages) {
    for (const block of message.content) {
      if (block.type === "tool_use") {
        const name: string = block.name; // narrowed by the tag
        void name;
      }
    }
  }
  await request("shutdown", {});
  return turn.text;
}

// Events narrow on `type`.
export function render(note: SessionEventParams, out: string[]): void {
  const event: WarrenEvent = note.event;
  switch (event.type) {
    case "text_delta":
      out.push(event.delta);
      break;
    case "retrying":
      out.splice(0, out.length, out.join("").slice(0, out.join("").length - (event.discard_chars ?? 0)));
      break;
    case "turn_failed": {
      const code: ErrorCode = event.error.data.code;
      out.push(`[${code}] ${event.error.message}`);
      break;
    }
    case "turn_completed":
      out.push(`(${event.stop_reason}, ${event.usage.total_tokens} tokens)`);
      break;
  }
}

// Envelopes: a whole line from the daemon, told apart by its members.
export function dispatch(message: DaemonMessage): string {
  if ("method" in message) {
    if (message.method === "session/event") return message.params.event.type;
    return message.params.name; // tool/execute
  }
  if ("error" in message) {
    return message.error.data.code === "SESSION_BUSY" ? "busy" : message.error.message;
  }
  return "result";
}

const ok: WarrenRequest<"turn/start"> = { jsonrpc: "2.0", id: 1, method: "turn/start", params: { session_id: "s", prompt: "hi" } };
const noParams: WarrenRequest<"session/list"> = { jsonrpc: "2.0", id: "a", method: "session/list" };
const response: WarrenResponse<"session/create"> = { jsonrpc: "2.0", id: 2, result: { session_id: "s", created_at_ms: 1 } };
const answer: ServerRequestResponse = { jsonrpc: "2.0", id: 3, result: { content: "42", is_error: false } };
const delta: EventMap["text_delta"] = { type: "text_delta", delta: "x" };
const params: ParamsOf<"session/compact"> = { session_id: "s", keep_last: 2 };
const result: ResultOf<"daemon/status">["store"] = "ok";
void ok, noParams, response, answer, delta, params, result;

// What the declarations refuse (each line must be an error, or tsc reports an unused directive).
// @ts-expect-error: prompt is required by turn/start
void request("turn/start", { session_id: "s" });
// @ts-expect-error: an unknown method
void request("session/nope", {});
// @ts-expect-error: an unknown field of the params
void request("session/list", { limit: 5, colour: "red" });
// @ts-expect-error: initial_turn is "run_immediately" or "defer"
void request("session/create", { initial_turn: "later" });
// @ts-expect-error: a text_delta carries delta, not text
const wrongEvent: EventMap["text_delta"] = { type: "text_delta", text: "x" };
// @ts-expect-error: no such data.code
const wrongCode: ErrorCode = "SESSION_GONE";
// @ts-expect-error: turn/start's params must be sent
const missingParams: WarrenRequest<"turn/start"> = { jsonrpc: "2.0", id: 1, method: "turn/start" };
void wrongEvent, wrongCode, missingParams;
