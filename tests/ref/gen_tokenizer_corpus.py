"""gen_tokenizer_corpus.py — the CLIP tokenizer's parity corpus, from the real transformers
v4.33.3 CLIPTokenizer (slow, without ftfy) as the oracle loads it (../shared/oracle/pipeline.py's
load_tokenizer).

Run from the repository root with Debian's python: /usr/bin/python3 tests/ref/gen_tokenizer_corpus.py
Reads the shipped tokenizer folder models/clip-tokenizer/ and writes tests/fixtures/tokenizer/:

  corpus.jsonl   one line per prompt (2,356; a fixed seed; UTF-8): {"text", "ids":
                 tokenizer(text).input_ids[1:-1] without truncation, "input_ids" (up to the
                 padding, which is pad_token_id 49407: asserted here) + "attention_mask" (a
                 string of 0/1) of tokenizer(text, padding="max_length", max_length=77,
                 truncation=True), and for
                 the first 300 prompts "sd2_ids": the same with SD 2.x's special tokens (pad "!",
                 id 0), and "ids_10": the call with max_length=10}.
  added.jsonl    textual-inversion style added tokens: {"tokens": [...added in order],
                 "text", "ids"} (tokenizer.add_tokens then tokenizer(text).input_ids[1:-1]).
  sd2/           SD 2.x's tokenizer_config.json and special_tokens_map.json (pipeline.py's
                 tokenizer_files with pad "!"), without the vocabulary.

The prompts mix English, accents (composed and decomposed), CJK, Hangul, kana, Cyrillic, Greek
(final sigma), Arabic, Hebrew, Devanagari, Thai, emoji (ZWJ sequences, skin tones, flags,
keycaps, variation selectors), punctuation runs, digits, apostrophes and contractions (straight
and curly, upper case), white space oddities (tabs, CR LF, NBSP, em space, ideographic space,
zero-width characters, line/paragraph separators, BOM), control characters, the special tokens
inside text, characters new in Unicode 15, random code points from every plane, over-long
prompts and the empty string.

  /usr/bin/python3 tests/ref/gen_tokenizer_corpus.py --check-all-codepoints build/diffusion
writes nothing: it runs `diffusion tokenize` on every code point U+0001..U+10FFFF (surrogates
excepted) in two contexts (runs of 64 consecutive code points; and "Σ{c}Σ{c}a'{c}s" words, which
exercise final sigma, case-ignorable code points and the contractions) and compares every id
with transformers (52,128 texts; run once when utf8proc or the Unicode tables change).

No prompt holds NUL: the C API takes NUL-terminated text
(transformers drops NUL anyway).
"""
import json
import os
import random
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
ORACLE = os.path.join(ROOT, "..", "shared", "oracle")
sys.path.insert(0, ORACLE)
import pipeline  # noqa: E402  (puts transformers v4.33.3 on sys.path)

TOK_DIR = os.path.join(ROOT, "models", "clip-tokenizer")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

WORDS = ("a photo of an astronaut riding a horse on mars highly detailed digital painting "
         "artstation concept art smooth sharp focus illustration by greg rutkowski and alphonse "
         "mucha masterpiece best quality ultra-detailed 8k uhd dslr soft lighting film grain "
         "Fujifilm XT3 portrait of a beautiful woman cinematic trending on CGSociety octane render "
         "unreal engine volumetric fog golden hour bokeh landscape mountains lake reflection "
         "cyberpunk city neon rain at night oil on canvas watercolor sketch anime style").split()
UNICODE = ["café", "naïve", "Ångström", "São Paulo", "Zürich", "façade", "crème brûlée", "jalapeño",
           "cafe\u0301", "n\u0303", "A\u030a", "中文提示词", "日本語のテキスト", "東京タワー", "한국어 문장",
           "ひらがな カタカナ", "Москва", "ПРИВЕТ мир", "Ёлка", "ΟΔΟΣ", "Σίσυφος", "ΑΣ.", "όσος Σ",
           "ΣΑΣ'Σ", "Ελληνικά", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ", "İstanbul",
           "ISTANBUL", "ıi", "straße", "STRASSE", "ﬁne ligature", "Ⅻ", "½ ¼ ²³", "ＡＢＣ１２３", "𝐀𝐁𝐂",
           "\u212a kelvin", "ſ long s", "Ǆ ǅ ǆ", "ᏣᎳᎩ", "ꭰ", "Ⴀ ა", "Ქ", "ǰ", "ŉ", "ΐ", "𐐀𐐨", "µ",
           "ÀÉÎÕÜ", "ß", "ẞ", "Ω ω \u2126", "‼", "⁉", "¿Qué?", "¡Hola!", "« guillemets »", "„Zitat“",
           "Mañana", "Dvořák", "Łódź", "Ærøskøbing", "Þór", "Čeština", "Türkçe", "Việt Nam", "ạ̀",
           "ḱṓ", "𠜎𠜱", "\U0002b739", "\U00031350", "\u0cf3", "\U0001fae8 new emoji", "\U0001e4d0",
           "\U00011f00", "a\u0345b", "!\u0345!", "ᾳ ΑΙ\u0345"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇺🇸", "🇯🇵🇫🇷", "❤️", "❤", "1️⃣", "🏳️‍🌈", "👩🏿‍💻", "🧑‍🚀",
         "✨✨✨", "🔥", "🐱‍👤", "🤷‍♀️", "🫠", "🦄🌈", "☕", "⚡️", "©️", "™", "®", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]
PUNCT = ["!!!", "...", "?!?", "((masterpiece))", "[[detailed]]", "{a|b}", "--", "~~", "@#$%^&*",
         "\\", "/", "(((best quality:1.3)))", "<lora:foo:0.8>", "__wildcard__", "a_b-c.d",
         ",,,", ";;", "''", "\"\"", "`code`", "|||", "+-=", "<>", "…", "——", "·", "•", "※", "°C"]
DIGITS = ["1234567890", "3.14159", "1,000,000", "2x", "4k", "8K", "1920x1080", "v1.5", "sd2.1",
          "00042", "٣٤٥", "१२३", "一二三", "2023年", "12:30pm", "50%", "$100", "#1", "-5", "1e-3"]
APOS = ["it's", "don't", "they're", "we've", "I'm", "we'll", "he'd", "IT'S", "DON'T", "it’s",
        "‘quoted’", "“double”", "'''", "rock'n'roll", "'s", "'S", "'ll've", "o'clock", "y'all",
        "'", "'d'd'd", "'re're", "ma'am", "l'été", "'ſ", "'m'"]
SPACE = ["\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "\u200b", "\u200c", "\u200d", "\u2028",
         "\u2029", "\ufeff", "\u202f", "\u205f", "\u1680", "\u180e", "  ", "\x0b", "\x0c", "\x1c",
         "\x85"]
CONTROL = ["\x01", "\x7f", "\x1b[31m", "\x02", "\ufffd", "\ue000", "\U000f0000", "\u0600", "\u00ad",
           "\U000e0001", "\ufff9", "\x08"]
SPECIAL = ["<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "<|endoftext|>x", "a<|startoftext|>b",
           "<|startoftext", "!<|endoftext|>", "<|ſtartoftext|>"]


def random_codepoints(rng, n):
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            cp = rng.randrange(0x20, 0x800)
        elif r < 0.8:
            cp = rng.randrange(0x800, 0x10000)
        else:
            cp = rng.randrange(0x10000, 0x110000)
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0x41
        out.append(chr(cp))
    return "".join(out)


def make_prompts():
    rng = random.Random(20231015)
    prompts = ["", " ", "\t\n", "a", "A", "photo", "a photo of a cat"]
    pools = [UNICODE, EMOJI, PUNCT, DIGITS, APOS, SPACE, CONTROL, SPECIAL]
    for pool in pools:
        prompts += list(pool)
    # every fragment inside words
    for pool in pools:
        for frag in pool:
            prompts.append(f"a {frag} b")
            prompts.append(f"word{frag}word")
    # random mixtures
    while len(prompts) < 1900:
        k = rng.randint(1, 25)
        parts = []
        for _ in range(k):
            r = rng.random()
            pool = WORDS if r < 0.5 else rng.choice(pools)
            parts.append(rng.choice(pool))
        seps = [" ", ", ", "", " ", "\t", " . ", "  "]
        s = parts[0]
        for p in parts[1:]:
            s += rng.choice(seps) + p
        if rng.random() < 0.2:
            s = s.upper()
        prompts.append(s)
    # random code points from every plane
    for _ in range(300):
        prompts.append(random_codepoints(rng, rng.randint(1, 40)))
    # over-long prompts (> 77 tokens)
    for i in range(150):
        n = rng.randint(60, 250)
        prompts.append(" ".join(rng.choice(WORDS + UNICODE + EMOJI + PUNCT) for _ in range(n)))
    prompts.append("a" * 3000)
    prompts.append("ab" * 1500)
    prompts.append("!" * 2000)
    prompts.append("1" * 500)
    prompts.append("😀" * 300)
    prompts.append(" ".join(WORDS) * 3)
    return prompts


def check_all_codepoints(diffusion):
    import subprocess

    tok = pipeline.load_tokenizer(TOK_DIR)
    cps = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = ["".join(chr(c) for c in cps[i:i + 64]) for i in range(0, len(cps), 64)]
    texts += [" ".join("\u03a3" + chr(c) + "\u03a3" + chr(c) + "a'" + chr(c) + "s" for c in cps[i:i + 32])
              for i in range(0, len(cps), 32)]
    bad = 0
    for b in range(0, len(texts), 400):
        batch = texts[b:b + 400]
        out = subprocess.run([diffusion, "tokenize", TOK_DIR, "--max-length", "2000", "--"] + batch,
                             capture_output=True, text=True, check=True).stdout.splitlines()
        assert len(out) == len(batch)
        for text, line in zip(batch, out):
            want = tok(text, padding="max_length", max_length=2000, truncation=True)["input_ids"]
            if json.loads(line)["input_ids"] != want:
                bad += 1
                print("differs:", " ".join(f"U+{ord(c):04X}" for c in text[:8]), "...")
    print(f"{len(texts)} texts, {bad} differ")
    return 1 if bad else 0


def main():
    import transformers  # noqa: F401

    if len(sys.argv) == 3 and sys.argv[1] == "--check-all-codepoints":
        sys.exit(check_all_codepoints(sys.argv[2]))
    os.makedirs(OUT, exist_ok=True)
    tok = pipeline.load_tokenizer(TOK_DIR)
    tmp = tempfile.mkdtemp()
    try:
        sd2_dir = os.path.join(tmp, "sd2")
        pipeline.tokenizer_files(sd2_dir, "!")
        os.makedirs(os.path.join(OUT, "sd2"), exist_ok=True)
        for f in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(os.path.join(sd2_dir, f), os.path.join(OUT, "sd2", f))
        tok2 = pipeline.load_tokenizer(sd2_dir)
    finally:
        shutil.rmtree(tmp)
    assert tok2.pad_token_id == 0
    prompts = make_prompts()
    with open(os.path.join(OUT, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for i, text in enumerate(prompts):
            full = tok(text).input_ids
            assert full[0] == tok.bos_token_id and full[-1] == tok.eos_token_id
            enc = tok(text, padding="max_length", max_length=77, truncation=True)
            n_real = sum(enc["attention_mask"])
            assert all(t == tok.pad_token_id for t in enc["input_ids"][n_real:])
            rec = {"text": text, "ids": full[1:-1], "input_ids": enc["input_ids"][:n_real],
                   "attention_mask": "".join(str(m) for m in enc["attention_mask"])}
            if i < 300:
                rec["sd2_ids"] = tok2(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
                rec["ids_10"] = tok(text, padding="max_length", max_length=10, truncation=True)["input_ids"]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    # added tokens (textual inversion placeholders), in a fresh tokenizer
    tok3 = pipeline.load_tokenizer(TOK_DIR)
    added = ["<cat-toy>", "<cat-toy>_1", "<Cat-Toy>", "sks", "<é>"]
    tok3.add_tokens(added)
    assert len(tok3) == 49408 + len(added)
    texts = ["a <cat-toy> on a table", "A <CAT-TOY> <Cat-Toy>", "<cat-toy><cat-toy>_1 <cat-toy>_12",
             "a photo of sks dog", "asks tasks", "<é> café <É>", "x<cat-toy>y", "<cat-toy>",
             "<cat-toy", "  <cat-toy>  sks  ", "it's <cat-toy>'s"]
    with open(os.path.join(OUT, "added.jsonl"), "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"tokens": added, "text": text, "ids": tok3(text).input_ids[1:-1]},
                               ensure_ascii=True) + "\n")
    print(f"{len(prompts)} prompts, {len(texts)} added-token texts")


if __name__ == "__main__":
    main()
