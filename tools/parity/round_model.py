#!/usr/bin/env python3
"""Round the tiny parity model to fp16 precision and write the committed model fixtures.

Usage: round_model.py --src DIR --out-fp32 DIR --out-fp16 DIR --single-file PATH --ckpt PATH

--src        a diffusers folder written by ../shared/parity/make_model.py (float32 weights)
--out-fp32   the same model with every float weight rounded through float16, stored float32.
             All reference runs use this folder, so the committed fp16 files hold exactly the
             weights the references were computed with.
--out-fp16   the same rounded weights stored float16 (the committed fixtures/tiny/).
--single-file  the LDM/A1111 layout of the rounded model, float16 (make_model's own key mapping;
             the DDPM schedule buffers stay float32, int64 position_ids stay int64).
--ckpt       the same state dict as a torch zip pickle {"state_dict": sd} (A1111 .ckpt style).

Every output is verified against the rounded fp32 folder by loading it with diffusers /
transformers; any difference is an error.
"""
import argparse
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

PARITY = os.environ.get("PARITY_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "parity"))
sys.dont_write_bytecode = True
sys.path.insert(0, PARITY)

WEIGHTS = ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors"]
CONFIGS = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
           "scheduler/scheduler_config.json"]
# tokenizer_sd77.json is a second copy of tokenizer.json with padding/truncation baked in; the
# fixtures do not need it (tests pad to 77 themselves).
TOKENIZER = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"]


def round_fp16(sd):
    return {k: (v.to(torch.float16).to(torch.float32) if v.is_floating_point() else v).contiguous()
            for k, v in sd.items()}


def write_folders(src, out32, out16):
    for d in (out32, out16):
        for rel in CONFIGS:
            os.makedirs(os.path.dirname(os.path.join(d, rel)) or d, exist_ok=True)
            shutil.copyfile(os.path.join(src, rel), os.path.join(d, rel))
        os.makedirs(os.path.join(d, "tokenizer"), exist_ok=True)
        for f in TOKENIZER:
            shutil.copyfile(os.path.join(src, "tokenizer", f), os.path.join(d, "tokenizer", f))
    for rel in WEIGHTS:
        r = round_fp16(load_file(os.path.join(src, rel)))
        save_file(r, os.path.join(out32, rel), metadata={"format": "pt"})
        h = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in r.items()}
        save_file(h, os.path.join(out16, rel), metadata={"format": "pt"})
        maxdiff = max(((r[k] - v.float()).abs().max().item() for k, v in load_file(os.path.join(src, rel)).items()
                       if v.is_floating_point()), default=0.0)
        print(f"{rel}: {len(r)} tensors rounded to fp16 (max |rounding| {maxdiff:.3g})", flush=True)


def compare_pipes(a, b, what, components=("unet", "vae", "text_encoder")):
    """Every tensor of the pipelines' `components` identical, dtype included, or an error."""
    for comp in components:
        sa, sb = getattr(a, comp).state_dict(), getattr(b, comp).state_dict()
        if set(sa) != set(sb):
            raise RuntimeError(f"{what}: {comp} key sets differ: {sorted(set(sa) ^ set(sb))[:10]}")
        for k in sa:
            x, y = sa[k], sb[k].reshape(sa[k].shape)
            if x.dtype != y.dtype or not torch.equal(x, y):
                raise RuntimeError(f"{what}: {comp}.{k} differs ({x.dtype} vs {y.dtype})")
        print(f"{what}: {comp} {len(sa)} tensors identical", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", required=True)
    ap.add_argument("--out-fp32", required=True)
    ap.add_argument("--out-fp16", required=True)
    ap.add_argument("--single-file", required=True)
    ap.add_argument("--ckpt", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)

    write_folders(a.src, a.out_fp32, a.out_fp16)

    from diffusers import StableDiffusionPipeline
    import make_model

    kw = dict(safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32)
    ref = StableDiffusionPipeline.from_pretrained(a.out_fp32, **kw)
    half = StableDiffusionPipeline.from_pretrained(a.out_fp16, **kw)
    compare_pipes(ref, half, "fp16 folder vs rounded fp32 folder")

    # fp16 of the rounded weights is exact, so the single file holds the reference weights.
    sd = make_model.write_single_file(ref, a.single_file, "fp16")
    print(f"wrote {a.single_file} ({len(sd)} tensors)", flush=True)
    single = StableDiffusionPipeline.from_single_file(a.single_file, config=a.out_fp32, local_files_only=True, **kw)
    compare_pipes(ref, single, "single file vs rounded fp32 folder")

    torch.save({"state_dict": sd}, a.ckpt)
    back = torch.load(a.ckpt, weights_only=True)["state_dict"]
    if set(back) != set(sd) or not all(back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]) for k in sd):
        raise RuntimeError("ckpt state dict differs from the single file")
    print(f"wrote {a.ckpt} ({len(back)} tensors), identical to the single file", flush=True)
    ck = StableDiffusionPipeline.from_single_file(a.ckpt, config=a.out_fp32, local_files_only=True, **kw)
    compare_pipes(ref, ck, "ckpt vs rounded fp32 folder")


if __name__ == "__main__":
    main()
