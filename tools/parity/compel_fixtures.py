#!/usr/bin/env python3
"""InvokeAI-syntax conditioning tensors from compel itself.

Usage:
  compel_fixtures.py --model fixtures/tiny --out fixtures/prompt

compel (PyPI `compel`, the version recorded in the output) is run with the --model folder's
tokenizer and CLIP text encoder (float32, CPU) as InvokeAI runs it: `truncate_long_prompts=False`
(long prompts become several 77-token chunks, split at sentence, phrase or word ends), the
default downweighting (MASK: a fragment weighted below 1 is lerped towards the prompt with the
fragment masked out of attention), and `pad_conditioning_tensors_to_same_length` for the positive
and negative prompt. Before compel, InvokeAI's own pre-steps (restated in prompt_fixtures.py):
inline `[negative]` words join the negative prompt, and a prompt with `text:weight` parts is a
legacy blend. The positive prompt goes through `build_conditioning_tensor_for_conjunction`, so an
explicit `.and()` concatenates its parts (InvokeAI 3's compel node); legacy blends through
`build_conditioning_tensor_for_prompt_object`.

Writes compel_conditioning.json (the cases and versions) and compel_conditioning.safetensors
(`case{i}.positive` and `case{i}.negative`, each `[L, D]`, already padded to one length).
"""
import argparse
import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prompt_fixtures import invokeai_split_negative, invokeai_weighted_subprompts, tags  # noqa: E402


def long_sentences():
    return ("A red fox sits in the snow. " + tags(12) + ". Behind it a (dark)0.6 forest rises against "
            + tags(30) + " and the light fades.")


# (prompt, negative prompt, clip skip, skip_normalize)
CASES = [
    ("a photograph of an astronaut riding a horse", "", 1, False),
    ("a cat++ (dog)1.3 on a mat", "blurry", 1, False),
    ("a tall thin man (picking apricots)0.5", "blurry", 1, False),
    ("a (red)0.2 ball and (green)0.8 cube- (sky)1.2", "", 1, False),
    ('("blue sphere", "red cube").blend(0.25,0.75)', "ugly", 1, False),
    ('("spider man", "robot mech").blend(1, 1, no_normalize)', "", 1, False),
    ('("a cat playing", "an oil (painting)1.2").and()', "", 1, False),
    ('("a cat", "a dog-").and(1, 0.5)', "lowres", 1, False),
    ("tabby cat:0.25 white duck:0.75 hybrid", "", 1, False),
    ("tabby cat:0.25 white duck:0.75 hybrid", "", 1, True),
    ("a cat [blurry, lowres] sitting [ugly]", "bad hands", 1, False),
    ("a (cat)1.3 on a mat-", "(blurry)0.7", 2, False),
    ("(masterpiece)1.2, " + tags(40), "ugly", 1, False),
    (" ".join(["word"] * 70) + " (spanning the chunk boundary)0.5 " + " ".join(["x"] * 20), "", 1, False),
    (long_sentences(), "", 1, False),
    ("", tags(30), 1, False),
]


def compel_conditioning(model_dir):
    import torch
    from compel import Compel
    from compel.embeddings_provider import ReturnedEmbeddingsType
    from compel.prompt_parser import Blend, PromptParser
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer"))
    text_model = CLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder"),
                                               torch_dtype=torch.float32).eval()
    # transformers 5 flattened CLIPTextModel; compel reaches the final LayerNorm as in 4.x.
    if not hasattr(text_model, "text_model"):
        text_model.text_model = types.SimpleNamespace(final_layer_norm=text_model.final_layer_norm)
    parser = PromptParser()
    cases, tensors = [], {}
    for index, (prompt, negative, clip_skip, skip_normalize) in enumerate(CASES):
        embeddings = (ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED if clip_skip == 1
                      else ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED)
        compel = Compel(tokenizer=tokenizer, text_encoder=text_model, truncate_long_prompts=False,
                        returned_embeddings_type=embeddings)
        positive_text, inline_negative = invokeai_split_negative(prompt.replace("\n", " "))
        negative_text = " ".join(t for t in (negative, inline_negative) if t)
        subprompts = invokeai_weighted_subprompts(positive_text, skip_normalize)
        with torch.no_grad():
            if len(subprompts) > 1:
                parts = [parser.parse_conjunction(t) for t, _ in subprompts]
                blend = Blend(prompts=[c.prompts[0] for c in parts if c.prompts],
                              weights=[w for c, (_, w) in zip(parts, subprompts) if c.prompts],
                              normalize_weights=not skip_normalize)
                (c, _), _ = compel.build_conditioning_tensor_for_prompt_object(blend)
            else:
                c, _ = compel.build_conditioning_tensor_for_conjunction(parser.parse_conjunction(positive_text))
            uc, _ = compel.build_conditioning_tensor_for_conjunction(parser.parse_conjunction(negative_text))
            c, uc = compel.pad_conditioning_tensors_to_same_length([c, uc])
        tensors[f"case{index}.positive"] = c.reshape(-1, c.shape[-1]).contiguous()
        tensors[f"case{index}.negative"] = uc.reshape(-1, uc.shape[-1]).contiguous()
        cases.append({"prompt": prompt, "negative_prompt": negative, "clip_skip": clip_skip,
                      "skip_normalize": skip_normalize, "tokens": c.shape[-2]})
    return cases, tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a diffusers SD folder (tokenizer/, text_encoder/)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from importlib.metadata import version
    from safetensors.torch import save_file
    cases, tensors = compel_conditioning(args.model)
    versions = {name: version(name) for name in ("compel", "transformers", "torch")}
    with open(os.path.join(args.out, "compel_conditioning.json"), "w", encoding="utf-8") as f:
        json.dump({"versions": versions, "cases": cases}, f, ensure_ascii=True, indent=1)
        f.write("\n")
    save_file(tensors, os.path.join(args.out, "compel_conditioning.safetensors"), metadata={"format": "pt"})
    for name in ("compel_conditioning.json", "compel_conditioning.safetensors"):
        print(f"{os.path.getsize(os.path.join(args.out, name)):8d}  {name}")


if __name__ == "__main__":
    main()
