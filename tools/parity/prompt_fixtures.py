#!/usr/bin/env python3
"""Prompt-language fixtures from the reference parsers themselves.

Usage:
  prompt_fixtures.py --webui WEBUI_DIR --model fixtures/tiny --out fixtures/prompt

WEBUI_DIR is a checkout of AUTOMATIC1111/stable-diffusion-webui (written against commit
28bd8e1): its `modules/prompt_parser.py`, `modules/sd_hijack_clip.py` and
`modules/sd_emphasis.py` are imported from there, unchanged, with the few other `modules.*`
they import (devices, sd_hijack, shared.opts) stubbed out. Nothing of A1111 is copied
into Dream. compel (PyPI `compel`, pure Python over pyparsing) is imported from the venv.

Writes:
- a1111_cases.json: for curated prompts, A1111's `get_multicond_prompt_list` (AND parts and
  weights), `get_learned_conditioning_prompt_schedules` for each part at 10 and 20 steps (and
  100 where the A1111 docs use 100), and `parse_prompt_attention` of every scheduled text.
  Prompts on which A1111 raises are listed under "errors" with the exception.
- a1111_random.json: random prompts over a hostile alphabet with their schedules at 10 steps
  ("lark": what lark returns, "admissible": every schedule that some parse tree of A1111's
  grammar gives, where that set is small enough to enumerate) and, for other random prompts,
  `parse_prompt_attention` results.
- a1111_chunks.json: `tokenize_line` (A1111's 75-token chunking with comma backtracking and
  BREAK) for long prompts, with the vocabulary of --tokenizer.
- a1111_conditioning.json + .safetensors: A1111's conditioning tensors
  (`get_multicond_learned_conditioning` for the prompt, `get_learned_conditioning` for the
  negative prompt) through `FrozenCLIPEmbedderWithCustomWords` with the --model folder's CLIP
  text encoder (float32, CPU): chunking, emphasis ("Original" or "No norm"), clip skip, one
  tensor per schedule row. The encoder's final LayerNorm bias is replaced by
  `final_layer_norm.bias` (stored in the .safetensors): with the random model's zero bias the
  output's mean is ~1e-9, and "Original" emphasis divides by it.
- invokeai_cases.json: compel's `PromptParser().parse_conjunction` for curated prompts, and
  InvokeAI's pre-steps (inline [negative] words, the legacy `a:0.25 b:0.75` blend) on others.

A1111 picks among equally valid parse trees with lark's internal set order; lark 1.1.2 (A1111's
pin) varies with PYTHONHASHSEED there, lark >= 1.3 does not. Run with lark 1.3.1 for stable
output. The lark, compel and pyparsing versions are recorded in each file.
"""
import argparse
import copy
import itertools
import json
import os
import random
import sys
import types


# A1111's settings as the stubbed `modules.shared.opts`; the conditioning cases change some.
OPTS = types.SimpleNamespace(emphasis="Original", comma_padding_backtrack=20, CLIP_stop_at_last_layers=1,
                             use_old_emphasis_implementation=False,
                             textual_inversion_add_hashes_to_infotext=False)


def stub_webui_modules():
    """The modules sd_hijack_clip imports for GPU placement and the model hijack."""
    shared = types.ModuleType("modules.shared")
    shared.opts = OPTS
    devices = types.ModuleType("modules.devices")
    devices.device = "cpu"
    devices.torch_npu_set_device = lambda: None
    sys.modules["modules.devices"] = devices
    sys.modules["modules.sd_hijack"] = types.ModuleType("modules.sd_hijack")
    sys.modules["modules.shared"] = shared


def import_webui(webui):
    sys.path.insert(0, os.path.abspath(webui))
    stub_webui_modules()
    from modules import prompt_parser, sd_hijack_clip
    return prompt_parser, sd_hijack_clip


def no_embeddings():
    """A stand-in for A1111's model hijack with no textual-inversion embeddings loaded."""
    return types.SimpleNamespace(
        embedding_db=types.SimpleNamespace(find_embedding_at_position=lambda tokens, pos: (None, None)),
        fixes=None, extra_generation_params={})


# --------------------------------------------------------------------------------------------
# A1111 curated cases. Steps: 10 and 20 for every prompt, plus the docs' 100 where noted.

A1111_PROMPTS = [
    # parse_prompt_attention docstring and wiki
    "normal text",
    "an (important) word",
    "(unbalanced",
    "\\(literal\\]",
    "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "a (word) ((word)) (((word)))",
    "[word] [[word]] [[[word]]]",
    "(word:1.5) (word:0.25) (word: 2 ) (word:+1.1)",
    "masterpiece, best quality, (extremely detailed:1.2), [[blurry]], (((hands)))",
    "a \\\\ backslash, a lone \\ one, and \\escapes",
    "unbalanced close) and ] brackets ) ]",
    "((nested (deep:1.5)) [down [further]])",
    "(neg:-1) weights (zero:0) (tiny:0.001)",
    "[square (round) square]",
    "(a:1.2:3) extra colons (b::2)",
    # BREAK
    "a cat BREAK a dog",
    "BREAK at the start",
    "(inside BREAK parens) BREAK outside",
    "lowercase break stays text, aBREAKb, BREAKfast",
    "two BREAK BREAK breaks",
    # unicode
    "caf\u00e9 (\u6771\u4eac:1.3) \u2615 [\u00fcber]",
    "emoji \U0001F431 (cat:1.1)\u3000wide space",
    # prompt editing and alternation (get_learned_conditioning_prompt_schedules doctests)
    "test",
    "a [b:3]",
    "a [b: 3]",
    "a [[[b]]:2]",
    "[(a:2):3]",
    "a [b : c : 1] d",
    "a[b:[c:d:2]:1]e",
    "a [unbalanced",
    "a [b:.5] c",
    "a [{b|d{:.5] c",
    "((a][:b:c [d:3]",
    "[a|(b:1.1)]",
    "[fe|]male",
    "[fe|||]male",
    "[cat:dog:0.5]",
    "a [cat:dog:5] on a mat",
    "[cat|dog]",
    "[cat|dog|bird] on a [red|blue] mat",
    "[a:b:1.5] [c:d:1.0] [e:f:0] [g:h:-2] [i:j:25] [k:l:+3] [m:n:1e1] [o:p: 4 ]",
    "[(masterpiece:1.2):(sketch:0.8):0.3], [photo|painting] of a [[cat]:dog:7]",
    "[a:b:2]) stray closer after editing",
    "a | b outside brackets",
    "trailing backslash \\",
    # AND
    "a cat AND a dog",
    "a cat AND a dog:1.5",
    "a cat:0.5 AND a dog : -1.2 AND bird AND",
    "ANDROID and AND, ANDY",
    "photo, style:1.2",
    "a [cat:dog:5",
    "[cat:dog:0.5] AND [red|blue] ball:0.7",
    # extra-network tags are taken out before A1111's parser sees the prompt; here they are text
    "a <lora:foo:0.8> cat",
]

# Prompts on which A1111 raises (not a LarkError, so the generation fails).
A1111_ERRORS = [
    "(a:1.2.3)",
    "(a:.)",
]

A1111_DOC_PROMPT_100 = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
                        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]")


def a1111_case(pp, prompt, steps_list):
    indexes, flat, _ = pp.get_multicond_prompt_list([prompt])
    parts = []
    for index, weight in indexes[0]:
        text = flat[index]
        schedules = {}
        for steps in steps_list:
            rows = pp.get_learned_conditioning_prompt_schedules([text], steps)[0]
            schedules[str(steps)] = [[end, t] for end, t in rows]
        attention = {}
        for rows in schedules.values():
            for _, t in rows:
                attention[t] = [[s, w] for s, w in pp.parse_prompt_attention(t)]
        parts.append({"text": text, "weight": weight, "schedules": schedules, "attention": attention})
    return {"prompt": prompt, "parts": parts}


# --------------------------------------------------------------------------------------------
# A1111 random cases

def explicit_schedules(pp, explicit_parser, prompt, steps, cap=2000):
    """Every schedule that some parse tree of A1111's grammar gives, or None if too many trees."""
    import lark

    def expand(node):
        if not isinstance(node, lark.Tree):
            return [node]
        if node.data == "_ambig":
            return [t for child in node.children for t in expand(child)]
        out = []
        for combo in itertools.product(*[expand(c) for c in node.children]):
            out.append(lark.Tree(node.data, list(combo)))
            if len(out) > cap:
                raise OverflowError
        return out

    class Fixed:
        def __init__(self, tree):
            self.tree = tree

        def parse(self, _):
            return copy.deepcopy(self.tree)

    try:
        forest = explicit_parser.parse(prompt)
    except lark.exceptions.LarkError:
        return [[[steps, prompt]]]
    try:
        trees = expand(forest)
    except OverflowError:
        return None
    real = pp.schedule_parser
    found = []
    try:
        for tree in trees:
            pp.schedule_parser = Fixed(tree)
            rows = [[end, t] for end, t in pp.get_learned_conditioning_prompt_schedules([prompt], steps)[0]]
            if rows not in found:
                found.append(rows)
    finally:
        pp.schedule_parser = real
    return found


SCHEDULE_ALPHABET = ["[", "]", "(", ")", ":", "|", "a", "b", " ", "1", ".", "5", "2", "\\", "0.5",
                     "-", "e", "cat", ":2]", "[a:", "(b:1.2)", "\u00e9", "+3", "\n"]
ATTENTION_ALPHABET = ["(", ")", "[", "]", ":", "1.5", "0.5", ":2)", "a", "b c", " ", "\\", "\\(",
                      "\\]", "BREAK", " BREAK ", "break", ",", "\u6771", "-1", ".", "\n"]


def random_prompts(rng, alphabet, count, max_len):
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, max_len))) for _ in range(count)]


def a1111_random(pp, rng):
    import lark
    explicit = lark.Lark(pp.schedule_parser.source_grammar, ambiguity="explicit")
    schedules = []
    for prompt in random_prompts(rng, SCHEDULE_ALPHABET, 600, 12):
        rows = [[end, t] for end, t in pp.get_learned_conditioning_prompt_schedules([prompt], 10)[0]]
        case = {"prompt": prompt, "lark": rows}
        admissible = explicit_schedules(pp, explicit, prompt, 10)
        if admissible is not None:
            case["admissible"] = admissible
        schedules.append(case)
    attention = []
    for prompt in random_prompts(rng, ATTENTION_ALPHABET, 600, 14):
        try:
            result = [[s, w] for s, w in pp.parse_prompt_attention(prompt)]
        except ValueError:
            continue  # a weight that is not a number: A1111 raises; covered by the curated errors
        attention.append({"prompt": prompt, "attention": result})
    return {"schedules": schedules, "attention": attention}


# --------------------------------------------------------------------------------------------
# A1111 chunking

def tags(n):
    words = ["masterpiece", "best quality", "ultra detailed", "a red fox", "snowy forest", "golden hour",
             "depth of field", "bokeh", "film grain", "soft light", "sharp focus", "high contrast"]
    return ", ".join(words[i % len(words)] + (f" {i}" if i >= len(words) else "") for i in range(n))


CHUNK_PROMPTS = [
    "",
    "a photograph of an astronaut riding a horse",
    tags(40),                                            # ~150 tokens, commas everywhere
    " ".join(["word"] * 160),                            # no commas: plain 75-token cuts
    " ".join(["word"] * 74) + ", " + " ".join(["x"] * 10),  # comma at index 74: next chunk starts after it
    " ".join(["w"] * 55) + ", " + " ".join(["x"] * 30),     # comma 20 back from the boundary: moves
    " ".join(["w"] * 54) + ", " + " ".join(["x"] * 30),     # comma 21 back: does not move
    "a cat BREAK a dog",
    "BREAK starts empty",
    "a BREAK",
    "one BREAK BREAK three",
    "(inside BREAK parens)",
    "(a cat:1.3) and [a dog], " + tags(30) + " BREAK (trailing:0.7) words",
    "a(b)c [d]e, f(g:1.5)h",
]


def a1111_chunks(shc, tokenizer_dir):
    import torch
    from transformers import CLIPTokenizer
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)

    class Chunker(shc.FrozenCLIPEmbedderWithCustomWordsBase):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.chunk_length = 75
            self.id_start = tokenizer.bos_token_id
            self.id_end = tokenizer.eos_token_id
            self.comma_token = tokenizer.get_vocab().get(",</w>")
            self.hijack = no_embeddings()

        def tokenize(self, texts):
            return tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    chunker = Chunker()
    cases = []
    for prompt in CHUNK_PROMPTS:
        chunks, token_count = chunker.tokenize_line(prompt)
        cases.append({"prompt": prompt, "token_count": token_count,
                      "chunks": [{"ids": c.tokens, "weights": c.multipliers} for c in chunks]})
    return {"comma_token": chunker.comma_token, "tokenizer": type(tokenizer).__name__, "cases": cases}


# --------------------------------------------------------------------------------------------
# A1111 conditioning tensors

# (prompt, negative prompt, steps, clip skip, emphasis)
CONDITIONING_CASES = [
    ("a photograph of an astronaut riding a horse", "", 20, 1, "Original"),
    ("a (cat:1.3) and [a dog], ((detailed))", "blurry, (lowres:1.2)", 20, 1, "Original"),
    ("(masterpiece:1.2), " + tags(40), "ugly", 20, 1, "Original"),
    ("a cat BREAK (a dog:1.2)", "", 20, 1, "Original"),
    ("[cat:dog:0.5] in a (garden:1.1)", "[blurry:sharp:3]", 10, 1, "Original"),
    ("[cat|(dog:1.3)|bird]", "", 4, 1, "Original"),
    ("[(short:1.2):" + tags(30) + ":3]", "", 10, 1, "Original"),
    ("a cat AND a (dog:1.4):1.5 AND " + tags(30) + ":0.7", "", 20, 1, "Original"),
    ("a (cat:1.3) on a mat", "[dog]", 20, 2, "Original"),
    ("a (cat:1.3) on [a mat] BREAK", "(blurry:1.1)", 20, 1, "No norm"),
]


def a1111_conditioning(pp, shc, model_dir):
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer
    text_model = CLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder"),
                                               torch_dtype=torch.float32).eval()
    bias = torch.tensor([0.25 + (i % 8) / 32 for i in range(text_model.final_layer_norm.bias.numel())])
    text_model.final_layer_norm.bias.data.copy_(bias)
    # transformers 5 flattened CLIPTextModel; A1111 reaches the final LayerNorm as in 4.x.
    if not hasattr(text_model, "text_model"):
        text_model.text_model = types.SimpleNamespace(final_layer_norm=text_model.final_layer_norm)
    wrapped = types.SimpleNamespace(
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer")), transformer=text_model)
    embedder = shc.FrozenCLIPEmbedderWithCustomWords(wrapped, no_embeddings())
    model = types.SimpleNamespace(get_learned_conditioning=embedder)
    cases, tensors = [], {"final_layer_norm.bias": bias}
    for index, (prompt, negative, steps, clip_skip, emphasis) in enumerate(CONDITIONING_CASES):
        OPTS.CLIP_stop_at_last_layers = clip_skip
        OPTS.emphasis = emphasis
        with torch.no_grad():
            positive = pp.get_multicond_learned_conditioning(model, [prompt], steps).batch[0]
            uncond = pp.get_learned_conditioning(model, [negative], steps)[0]
        parts = []
        for p, part in enumerate(positive):
            for r, row in enumerate(part.schedules):
                tensors[f"case{index}.part{p}.row{r}"] = row.cond.contiguous()
            parts.append({"weight": part.weight, "until_steps": [row.end_at_step for row in part.schedules]})
        for r, row in enumerate(uncond):
            tensors[f"case{index}.negative.row{r}"] = row.cond.contiguous()
        cases.append({"prompt": prompt, "negative_prompt": negative, "steps": steps, "clip_skip": clip_skip,
                      "emphasis": emphasis, "parts": parts,
                      "negative_until_steps": [row.end_at_step for row in uncond]})
    OPTS.CLIP_stop_at_last_layers = 1
    OPTS.emphasis = "Original"
    return cases, tensors


# --------------------------------------------------------------------------------------------
# compel / InvokeAI

COMPEL_PROMPTS = [
    "a cat++ (dog)1.3",
    "a tall thin man picking apricots+",
    "a tall thin man picking (apricots)+",
    "a tall thin man (picking apricots)-",
    "a tall thin man (picking apricots)++",
    "a tall thin man (picking apricots+)++",
    "a tall thin man picking (apricots)1.1",
    "a tall thin man (picking (apricots)1.3)1.1",
    "a man picking apricots--- from a tree",
    '("a tall thin man picking apricots", "a tall thin man picking pears").blend(1,1)',
    '("blue sphere", "red cube").blend(0.25,0.75)',
    '("spider man", "robot mech").blend(1, 1, no_normalize)',
    '(cat, dog).blend(0.3, 0.7)',
    "mountain, snow, (sunset)0.5, clouds",
    "a (red (apple)0.8)1.2 on a table",
    '"a quoted phrase"+ in the middle',
    "well-known cat+ and cat-dog",
    "",
    "   ",
    "a cat withLora(my_lora, 0.7) on a mat",
    "withLora(style) a portrait useLora(detail_v2, 0.5)",
    "unbalanced (paren here",
    "a (cat) on a mat",
    "cat,dog,bird. end.",
    "1girl, solo, (masterpiece)1.2, best quality",
    "a dog++++ and a cat----",
    "(a, b)1.5 (c.d)0.5",
    "escaped \\(paren\\) and \\+plus",
    "unicode caf\u00e9 \u2615 (\u65e5\u672c)1.2 \U0001F431+",
    "(picking apricots).attend(1.4) (pears).attend(--)",
    "a (b)+0.5 c",
    "numbers 1.5 and -2 stay, (x)2",
    "a + b = c",
    'quote "inside a (weighted)1.5 part"- here',
]

# InvokeAI's own pre-steps (invokeai/backend/prompting/conditioning.py, InvokeAI 3.0), which run
# before compel. Restated here; InvokeAI is not installed.

def invokeai_split_negative(prompt):
    import re
    negative = re.findall(r"\[(.*?)\]", prompt)
    if not negative:
        return prompt, ""
    cleaned = re.sub(" +", " ", re.sub(r"\[(.*?)\]", " ", prompt))
    return cleaned, " ".join(negative)


def invokeai_weighted_subprompts(text, skip_normalize):
    import re
    pattern = re.compile(r"""(?P<prompt>(?:\\\:|[^:])+)(?::+(?P<weight>-?\d+(?:\.\d+)?)?\s*|$)""")
    parts = [(m.group("prompt").replace("\\:", ":"), float(m.group("weight") or 1))
             for m in re.finditer(pattern, text)]
    if skip_normalize:
        return parts
    total = sum(w for _, w in parts)
    if total == 0:
        return [(t, 1 / max(len(parts), 1)) for t, _ in parts]
    return [(t, w / total) for t, w in parts]


INVOKEAI_PROMPTS = [
    ("tabby cat:0.25 white duck:0.75 hybrid", False),
    ("tabby cat:0.25 white duck:0.75 hybrid", True),
    ("mountain man:2 snowy:0", False),
    ("a:0 b:0", False),
    ("just one part:1.5", False),
    ("no colons here", False),
    ("escaped\\:colon:1 other:3", False),
    ("(cat)1.2:0.5 dog++:0.5", False),
    ("this is a test prompt [not really] to make you understand [cool] how this works.", False),
    ("a cat [blurry, lowres] sitting [ugly]", False),
    ("a red ball [unclosed", False),
]


def serialize_flattened(prompt, classes):
    Blend, FlattenedPrompt, Fragment = classes
    if isinstance(prompt, Blend):
        return {"blend": [serialize_flattened(p, classes) for p in prompt.prompts],
                "weights": list(prompt.weights), "normalize": prompt.normalize_weights}
    if isinstance(prompt, FlattenedPrompt):
        out = []
        for f in prompt.children:
            if isinstance(f, Fragment):
                out.append([f.text, f.weight])
            else:
                out.append({"unsupported": type(f).__name__})
        return {"fragments": out}
    return {"unsupported": type(prompt).__name__}


def compel_cases():
    from compel.prompt_parser import Blend, FlattenedPrompt, Fragment, PromptParser
    classes = (Blend, FlattenedPrompt, Fragment)
    parser = PromptParser()
    cases = []
    for prompt in COMPEL_PROMPTS:
        try:
            conj = parser.parse_conjunction(prompt)
            cases.append({"prompt": prompt,
                          "prompts": [serialize_flattened(p, classes) for p in conj.prompts],
                          "weights": list(conj.weights),
                          "loras": [[l.model, float(l.weight)] for l in conj.lora_weights]})
        except Exception as e:  # compel raises pyparsing's ParseException and its own errors
            cases.append({"prompt": prompt, "error": f"{type(e).__name__}: {e}"})
    invokeai = []
    for prompt, skip_normalize in INVOKEAI_PROMPTS:
        positive, negative = invokeai_split_negative(prompt.replace("\n", " "))
        subprompts = invokeai_weighted_subprompts(positive, skip_normalize)
        case = {"prompt": prompt, "skip_normalize": skip_normalize, "positive_text": positive,
                "negative_text": negative, "subprompts": [[t, w] for t, w in subprompts]}
        if len(subprompts) > 1:
            parts = [parser.parse_conjunction(t) for t in (t for t, _ in subprompts)]
            case["positive"] = {"blend": [serialize_flattened(c.prompts[0], classes) for c in parts if c.prompts],
                                "weights": [w for c, (_, w) in zip(parts, subprompts) if c.prompts],
                                "normalize": not skip_normalize}
        else:
            case["positive"] = serialize_flattened(parser.parse_conjunction(positive).prompts[0], classes)
        case["negative"] = serialize_flattened(parser.parse_conjunction(negative).prompts[0], classes)
        invokeai.append(case)
    return {"compel": cases, "invokeai": invokeai}


def compel_random(rng):
    from compel.prompt_parser import Blend, FlattenedPrompt, Fragment, PromptParser
    classes = (Blend, FlattenedPrompt, Fragment)
    parser = PromptParser()
    alphabet = ["a", "cat", " ", "  ", "(", ")", "+", "++", "-", "1.3", "0.5", ",", ".", '"', "\\(",
                "\\", "withLora(x, 0.5)", "2", "e", "\u00e9", "=", "-x", "dog+", "(b)1.2"]
    cases = []
    for prompt in random_prompts(rng, alphabet, 500, 10):
        try:
            conj = parser.parse_conjunction(prompt)
            cases.append({"prompt": prompt,
                          "prompts": [serialize_flattened(p, classes) for p in conj.prompts],
                          "loras": [[l.model, float(l.weight)] for l in conj.lora_weights]})
        except Exception as e:
            cases.append({"prompt": prompt, "error": type(e).__name__})
    return cases


def versions():
    from importlib.metadata import version
    return {name: version(name) for name in ("lark", "compel", "pyparsing", "transformers", "torch")}


def write(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=True, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--webui", required=True, help="a stable-diffusion-webui checkout")
    ap.add_argument("--model", required=True, help="a diffusers SD folder (tokenizer/, text_encoder/)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    pp, shc = import_webui(args.webui)

    cases = [a1111_case(pp, p, [10, 20]) for p in A1111_PROMPTS]
    cases.append(a1111_case(pp, A1111_DOC_PROMPT_100, [10, 20, 100]))
    errors = []
    for prompt in A1111_ERRORS:
        try:
            pp.parse_prompt_attention(prompt)
            raise SystemExit(f"expected A1111 to raise on {prompt!r}")
        except ValueError as e:
            errors.append({"prompt": prompt, "error": f"{type(e).__name__}: {e}"})
    write(os.path.join(args.out, "a1111_cases.json"), {"versions": versions(), "cases": cases, "errors": errors})

    rng = random.Random(5)
    write(os.path.join(args.out, "a1111_random.json"), {"versions": versions(), **a1111_random(pp, rng)})
    tokenizer_dir = os.path.join(args.model, "tokenizer")
    write(os.path.join(args.out, "a1111_chunks.json"), {"versions": versions(), **a1111_chunks(shc, tokenizer_dir)})
    from safetensors.torch import save_file
    cases, tensors = a1111_conditioning(pp, shc, args.model)
    write(os.path.join(args.out, "a1111_conditioning.json"), {"versions": versions(), "cases": cases})
    save_file(tensors, os.path.join(args.out, "a1111_conditioning.safetensors"), metadata={"format": "pt"})
    write(os.path.join(args.out, "invokeai_cases.json"),
          {"versions": versions(), **compel_cases(), "random": compel_random(rng)})
    for name in sorted(os.listdir(args.out)):
        print(f"{os.path.getsize(os.path.join(args.out, name)):8d}  {name}")


if __name__ == "__main__":
    main()
