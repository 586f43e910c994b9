#!/usr/bin/env python3
"""SD 2.x padding: a tokenizer folder that pads with `!` (id 0), and what prompts give with it.

Usage:
  pad_fixtures.py --model fixtures/tiny --out fixtures/prompt

SD 2.x's `tokenizer/special_tokens_map.json` and `tokenizer_config.json` say `"pad_token": "!"`
where SD 1.x's say `<|endoftext|>`; A1111 (`id_pad`) and compel pad after end-of-text with it.
Writes `sd2_tokenizer/` (the --model folder's two tokenizer configs with that pad token) and
`sd2_pad.safetensors`, with the --model text encoder (float32, CPU):
- `diffusers`: diffusers' prompt embeddings (`tokenizer(prompt, padding="max_length")`, the
  text encoder's last hidden state) for "a photograph of an astronaut riding a horse", which is
  also A1111's conditioning of that prompt;
- `ids`: those ids;
- `compel.positive`, `compel.negative`: compel (as compel_fixtures.py runs it) for
  "a (cat)1.3 on a mat-" and "".
"""
import argparse
import json
import os
import shutil
import tempfile

PROMPT = "a photograph of an astronaut riding a horse"


def write_configs(model_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        with open(os.path.join(model_dir, "tokenizer", name), encoding="utf-8") as f:
            config = json.load(f)
        config["pad_token"] = "!"
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch
    from compel import Compel
    from compel.prompt_parser import PromptParser
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    configs = os.path.join(args.out, "sd2_tokenizer")
    write_configs(args.model, configs)
    with tempfile.TemporaryDirectory() as folder:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(args.model, "tokenizer", name), folder)
        for name in os.listdir(configs):
            shutil.copy(os.path.join(configs, name), folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    assert tokenizer.pad_token_id == 0, tokenizer.pad_token_id
    text_model = CLIPTextModel.from_pretrained(os.path.join(args.model, "text_encoder"),
                                               torch_dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    compel = Compel(tokenizer=tokenizer, text_encoder=text_model, truncate_long_prompts=False)
    parser = PromptParser()
    with torch.no_grad():
        diffusers = text_model(ids).last_hidden_state[0]
        c, _ = compel.build_conditioning_tensor_for_conjunction(parser.parse_conjunction("a (cat)1.3 on a mat-"))
        uc, _ = compel.build_conditioning_tensor_for_conjunction(parser.parse_conjunction(""))
    tensors = {"ids": ids[0].to(torch.int64).contiguous(), "diffusers": diffusers.contiguous(),
               "compel.positive": c[0].contiguous(), "compel.negative": uc[0].contiguous()}
    path = os.path.join(args.out, "sd2_pad.safetensors")
    save_file(tensors, path, metadata={"format": "pt", "prompt": PROMPT})
    print(f"{os.path.getsize(path):8d}  {path}")


if __name__ == "__main__":
    main()
