// A minimal stand-in for @types/node (not packaged in Debian): just what index.d.ts and usage.*ts use.
interface Buffer extends Uint8Array {
  toString(encoding?: string): string;
  equals(other: Uint8Array): boolean;
}
declare var Buffer: {
  from(data: string | Uint8Array | readonly number[], encoding?: string): Buffer;
};
declare var process: { env: Record<string, string | undefined> };
