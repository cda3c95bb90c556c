// The CommonJS view of the same declarations.
import cached = require("cached-client");

const client: cached.CachedClient = new cached.CachedClient();
const p: Promise<cached.GetResult> = client.get("Student", 1);
void p;
