// Serves @skyware/labeler 0.2 (the peer in BENCHMARKS.md) on 127.0.0.1:<port>.
//
//   node bench/peer-server.mjs <dir> <port> <dids.bin>
//
// On first use it seeds <dir>/skyware.db with one label per DID of <dids.bin> (32-byte DIDs
// back to back, the file the read_path bench writes), through skyware's own API
// (LabelerServer#createLabel: sign, insert, emit — as in production), with the same values the
// bench gives our labeler: relay-member for every 4th DID, verified-mail-operator otherwise.
// Prints "LISTENING <port>" on stdout when it serves. Exits when stdin closes.
//
// Needs `npm install --prefix bench/peer @skyware/labeler@0.2` (bench/peer is git-ignored);
// the read_path bench runs that for you.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(new URL("./peer/", import.meta.url));
const { LabelerServer } = require("@skyware/labeler");

const [dir, portArg, didsFile] = process.argv.slice(2);
fs.mkdirSync(dir, { recursive: true });
// The first shared vector key: a test key, never a real one.
const signingKey = "9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c";
const did = "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme";
const seeded = path.join(dir, "seeded");
const server = new LabelerServer({ did, signingKey, dbPath: path.join(dir, "skyware.db") });

if (!fs.existsSync(seeded)) {
  const blob = fs.readFileSync(didsFile, "latin1");
  const n = blob.length / 32;
  const started = Date.now();
  for (let i = 0; i < n; i += 500) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 500); j++) {
      const uri = blob.slice(j * 32, j * 32 + 32);
      const val = j % 4 === 3 ? "relay-member" : "verified-mail-operator";
      batch.push(server.createLabel({ uri, val }));
    }
    await Promise.all(batch);
  }
  fs.writeFileSync(seeded, String(n));
  console.error(`seeded ${n} labels through createLabel in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
server.start({ port: Number(portArg), host: "127.0.0.1" }, (error) => {
  if (error) {
    console.error(error);
    process.exit(1);
  }
  console.log(`LISTENING ${portArg}`);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
