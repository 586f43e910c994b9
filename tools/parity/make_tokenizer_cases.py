#!/usr/bin/env python3
"""Write tokenizer test cases from transformers' CLIPTokenizer (what diffusers uses).

Usage: make_tokenizer_cases.py TOKENIZER_DIR OUT.json

Each case: {"prompt", "ids": full ids with BOS/EOS and no truncation,
            "ids_77": exactly what diffusers feeds the text encoder:
                      tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids}
"""
import json
import sys

LONG_WORDS = ("a majestic castle on a hill at sunset, highly detailed, dramatic lighting, oil painting by "
              "a famous artist, trending on artstation, volumetric fog, golden hour, wide angle lens, "
              "cinematic composition, sharp focus, intricate details, rich colors, masterpiece, "
              "best quality, ultra realistic, 8k resolution, epic fantasy landscape with dragons and "
              "knights riding through an ancient forest, with a river of liquid silver and crystal towers")

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "Hello, World! (test) [brackets] {braces}; semi:colon... ?!",
    "东京の夜景 🌃🐱 café naïve Ελληνικά",
    "cafe\u0301 e\u0301le\u0300ve Åström",  # decomposed accents: NFC composes them
    "tabs\tand\nnewlines   and  multiple   spaces  ",
    "1234.5 apples, 3.14159 pies and 1,000,000 dollars in 2024",
    "",
    "a cat <|endoftext|> a dog",
    "<|startoftext|>hello<|endoftext|>",
    "it's don't we'll I'm you're they've she'd",
    "\u201ccurly quotes\u201d and \u2018single\u2019 \u2014 em dash \u2026",
    "UPPER Case MiXeD wordsWithCamelCase snake_case kebab-case",
    "a&amp;b <b>html</b> 50% #hashtag @user ~tilde `backtick`",
    LONG_WORDS,  # ~95 tokens: truncated to 75 + EOS
    " ".join(["a red apple and a green pear"] * 29),  # ~200 tokens
]


def main():
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(sys.argv[1])
    cases = []
    for p in PROMPTS:
        ids = tok(p).input_ids
        ids_77 = tok(p, padding="max_length", max_length=77, truncation=True).input_ids
        assert len(ids_77) == 77 and ids_77[0] == 49406
        cases.append({"prompt": p, "ids": ids, "ids_77": ids_77})
        print(f"{len(ids):4d} tokens  {p[:60]!r}")
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        # one case per line; \u escapes keep decomposed accents and emoji byte-exact
        f.write("[\n" + ",\n".join(json.dumps(c) for c in cases) + "\n]\n")


if __name__ == "__main__":
    main()
