"use strict";
// Type-checks test/types/usage.mts and usage.cts against index.d.ts with tsc (Debian node-typescript), when it
// is installed; skipped (saying so) otherwise. The @ts-expect-error lines make it fail if the declarations
// were too loose (any).

const { test } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const { spawnSync } = require("node:child_process");

const tsc = spawnSync("tsc", ["--version"], { encoding: "utf8" });
const available = tsc.status === 0;

test("index.d.ts type-checks (tsc, module node16: the exports map's types condition)", { skip: available ? false : "tsc not installed (apt-get install node-typescript)" }, () => {
  const out = spawnSync("tsc", ["-p", path.join(__dirname, "types", "tsconfig.json")], { encoding: "utf8", timeout: 60000 });
  assert.equal(out.status, 0, out.stdout + out.stderr);
});
