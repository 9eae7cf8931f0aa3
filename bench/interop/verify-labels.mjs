// Checks a running labeler the way an atproto consumer does, with the official libraries:
// every label from queryLabels (JSON) and from a subscribeLabels backfill (DAG-CBOR frames) is
// re-encoded without `sig` by @ipld/dag-cbor and verified with @atproto/crypto against the
// `src` did:key (default verifier settings: low-S, compact signatures only), or against the
// did:key given with `--key` (a labeler whose src is a did:plc or did:web: the key its DID
// document names, e.g. the one `labeler key rotate` printed).
//
//   node bench/interop/verify-labels.mjs http://127.0.0.1:8081 [--key did:key:zQ3s…]
//
// Needs `npm install --prefix bench/peer @atproto/api @atproto/crypto @ipld/dag-cbor cborg ws`
// (git-ignored).
import { createRequire } from "node:module";

const require = createRequire(new URL("../peer/", import.meta.url));
const { verifySignature } = require("@atproto/crypto");
const { AtpAgent } = require("@atproto/api");
// ESM-only packages: import them by path from the git-ignored install.
const cbor = await import(new URL("../peer/node_modules/@ipld/dag-cbor/src/index.js", import.meta.url));
// dag-cbor has no "decode the first object" call; cborg (its codec) does, with its options.
const cborg = await import(new URL("../peer/node_modules/cborg/cborg.js", import.meta.url));
const WebSocket = require("ws");

const args = process.argv.slice(2);
const keyAt = args.indexOf("--key");
const key = keyAt >= 0 ? args.splice(keyAt, 2)[1] : undefined;
const base = args[0] ?? "http://127.0.0.1:8081";
const fromB64 = (s) => new Uint8Array(Buffer.from(s, "base64"));
let failures = 0;

async function check(label, where) {
  const { sig, ...unsigned } = label;
  const signer = key ?? label.src;
  if (!signer.startsWith("did:key:")) throw new Error(`${where}: src ${label.src} is not a did:key; pass --key`);
  if ("neg" in unsigned && unsigned.neg === false) throw new Error(`${where}: neg:false must be omitted`);
  const ok = await verifySignature(signer, cbor.encode(unsigned), sig);
  if (!ok) {
    failures++;
    console.error(`${where}: signature does not verify: ${JSON.stringify(unsigned)}`);
  }
}

// queryLabels, every page.
let cursor;
let fromQuery = 0;
do {
  const url = new URL("/xrpc/com.atproto.label.queryLabels", base);
  url.searchParams.append("uriPatterns", "*");
  url.searchParams.set("limit", "250");
  if (cursor) url.searchParams.set("cursor", cursor);
  const body = await (await fetch(url)).json();
  for (const l of body.labels) {
    if (typeof l.sig?.$bytes !== "string" || l.sig.$bytes.endsWith("=")) throw new Error("sig must be unpadded {$bytes}");
    await check({ ...l, sig: fromB64(l.sig.$bytes) }, `queryLabels ${l.uri}`);
    fromQuery++;
  }
  cursor = body.cursor;
} while (cursor);

// The same pages through the official client, which validates every response against the
// lexicon and turns `{"$bytes"}` into bytes.
const agent = new AtpAgent({ service: base });
let fromAgent = 0;
cursor = undefined;
do {
  const { data } = await agent.com.atproto.label.queryLabels({ uriPatterns: ["*"], limit: 250, cursor });
  for (const l of data.labels) {
    if (!(l.sig instanceof Uint8Array)) throw new Error(`@atproto/api read sig as ${typeof l.sig}`);
    await check(l, `@atproto/api queryLabels ${l.uri}`);
    fromAgent++;
  }
  cursor = data.cursor;
} while (cursor);
if (fromAgent !== fromQuery) throw new Error(`@atproto/api saw ${fromAgent} labels, fetch ${fromQuery}`);

// subscribeLabels from cursor=0: header + body per binary message.
const ws = new WebSocket(new URL("/xrpc/com.atproto.label.subscribeLabels?cursor=0", base.replace(/^http/, "ws")));
let fromStream = 0;
let lastSeq = 0;
await new Promise((resolve, reject) => {
  const done = setTimeout(() => { ws.close(); resolve(); }, 3000);
  ws.on("message", async (data) => {
    const bytes = new Uint8Array(data);
    const [header, rest] = cborg.decodeFirst(bytes, cbor.decodeOptions);
    const body = cbor.decode(rest); // strict: the body must use the rest of the message
    if (header.op !== 1 || header.t !== "#labels") return reject(new Error(`unexpected frame ${JSON.stringify(header)}`));
    if (body.seq <= lastSeq) return reject(new Error(`seq ${body.seq} after ${lastSeq}`));
    lastSeq = body.seq;
    for (const l of body.labels) { await check(l, `subscribeLabels seq ${body.seq}`); fromStream++; }
    done.refresh();
  });
  ws.on("error", reject);
});
console.log(`verified ${fromQuery} labels from queryLabels (twice: fetch and @atproto/api) and ${fromStream} from subscribeLabels; ${failures} failures`);
process.exit(failures ? 1 : 0);
