// Must NOT compile (tests/test_typescript.py): each line marked `error TSnnnn` is the error tsc
// must report there, and no other line may have one.
import type { Methods, RequestFunction } from "../../schemas/typescript/warren-protocol";

declare const request: RequestFunction;

void request("turn/start", { session_id: "s", prompt: 42 }); // error TS2322
void request("session/history", { session_id: "s", limit: "10" }); // error TS2322
const params: Methods["session/fork"]["params"] = { message_index: 2 }; // error TS2741
export async function f(): Promise<void> {
  const status = await request("daemon/status", {});
  const n: number = status.store; // error TS2322
  void params, n;
}
