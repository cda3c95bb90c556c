// Type-checked by test/types.test.js (tsc --noEmit): the API as a TypeScript ESM user sees it.
import { CachedClient, CachedError, CachedConnectionError, codes, DEADLINE_EXCEEDED, type GetResult } from "cached-client";

async function main(): Promise<void> {
  const c = new CachedClient({ socket: process.env.CACHED_SOCKET, timeout: 5000, nearCache: 1000 });
  const r: GetResult = await c.get("Student", 12, { hashKey: "Class", hashId: 3n, timeout: 200 });
  const bytes: Buffer | null = r.value;
  const hit: boolean = r.hit && !r.stale;
  const stored: boolean = await c.set("Student", "alice", Buffer.from([0, 255]), { ttl: 60 });
  const deleted: boolean = (await c.delete("Student", 12n)) || (await c.deleteHash("Class", 3));
  const filled: Buffer | null = await c.fetch("Session", 1, async () => "computed", { ttl: 10, timeout: 2000 });
  const filled2: Buffer | null = await c.fetch("Session", 2, () => null);
  const pong: "pong" = await c.ping();
  const stats: Record<string, any> = await c.call("stats", {}, { timeout: 1000 });
  try {
    await c.get("Student", 1);
  } catch (error) {
    if (error instanceof CachedConnectionError) {
      const minusOne: -1 = error.code;
    } else if (error instanceof CachedError && error.code === DEADLINE_EXCEEDED) {
      const data: unknown = error.data;
    }
  }
  const code: -32009 = codes.DEADLINE_EXCEEDED;
  // @ts-expect-error: a value must be text or bytes
  await c.set("Student", 1, 12);
  // @ts-expect-error: identities are numbers, bigints or strings
  await c.get("Student", { id: 1 });
  c.close();
  void [bytes, hit, stored, deleted, filled, filled2, pong, stats, code];
}
void main;
