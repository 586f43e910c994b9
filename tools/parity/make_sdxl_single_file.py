#!/usr/bin/env python3
"""Write a diffusers SDXL folder as one original-layout checkpoint, as A1111 and Civitai files are.

Usage: make_sdxl_single_file.py FOLDER OUT.safetensors
       (run with the parity venv's python; ../shared/parity is found as in round_model.py)

The layout is Stability's `sgm` (generative-models) one, which sd_xl_base_1.0.safetensors uses:
  model.diffusion_model.*   the UNet in latent-diffusion names (input_blocks / middle_block /
                            output_blocks), with SDXL's added-conditioning MLP as label_emb.0.{0,2}
  first_stage_model.*       the VAE in latent-diffusion names
  conditioner.embedders.0.transformer.text_model.*
                            the first text encoder (OpenAI CLIP), in transformers' own names, with
                            the int64 position_ids buffer real files carry
  conditioner.embedders.1.model.*
                            the second text encoder in open_clip's names: q/k/v fused into
                            transformer.resblocks.N.attn.in_proj_{weight,bias}, ln_1/ln_2,
                            mlp.c_fc/c_proj, ln_final, positional_embedding, token_embedding,
                            text_projection stored [width, projection] (open_clip applies it as
                            x @ P, the transpose of transformers' nn.Linear weight), and
                            logit_scale (the contrastive temperature, unused by SDXL)
The UNet and VAE renaming is ../shared/parity/make_model.py's (imported; its SD 1.x tables are the
same in SDXL); the text encoders' and label_emb's follow diffusers'
scripts/convert_diffusers_to_original_sdxl.py. Tensors keep the folder's dtype (float16).

The file is then verified against StableDiffusionXLPipeline.from_pretrained(FOLDER): every
tensor of all four networks must be identical (torch.equal) when diffusers reads the file, or it
is an error. The UNet and VAE come from StableDiffusionXLPipeline.from_single_file(OUT,
config=FOLDER, local_files_only=True). The text encoders are converted by the functions that
from_single_file calls for an SDXL file (single_file_utils.convert_ldm_clip_checkpoint and
convert_open_clip_checkpoint with the conditioner.embedders prefixes) and loaded strictly into the
folder's text_encoder/ and text_encoder_2/ configs: from_single_file itself picks the converter
by comparing each encoder's width with the file's (768 vs 1280 in SDXL), and the tiny model's two
encoders are both 32 wide, so it would pick the first encoder's for both.
"""
import argparse
import math
import os
import sys

import torch
from safetensors.torch import save_file

PARITY = os.environ.get("PARITY_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "parity"))
sys.dont_write_bytecode = True
sys.path.insert(0, PARITY)

import make_model  # noqa: E402  (unet_to_ldm, vae_to_ldm, te_hub_state_dict)
from round_model import compare_pipes  # noqa: E402

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")

# transformers' CLIPEncoderLayer names -> open_clip's ResidualAttentionBlock names.
OPEN_CLIP_LAYER = [("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                   ("self_attn.out_proj.", "attn.out_proj."), ("mlp.fc1.", "mlp.c_fc."),
                   ("mlp.fc2.", "mlp.c_proj.")]


def label_emb(unet_sd):
    """SDXL's add_embedding (text_time) MLP is sgm's label_emb: Sequential(Sequential(Linear,
    SiLU, Linear))."""
    table = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
    out, rest = {}, {}
    for k, v in unet_sd.items():
        hit = [(hf, ldm) for hf, ldm in table.items() if k.startswith(hf)]
        if hit:
            hf, ldm = hit[0]
            out["model.diffusion_model." + ldm + k[len(hf):]] = v
        else:
            rest[k] = v
    return out, rest


def open_clip_state_dict(sd, layers):
    """A CLIPTextModelWithProjection state dict in open_clip's text-tower names."""
    out = {
        "token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": sd.pop("text_model.final_layer_norm.bias"),
        "text_projection": sd.pop("text_projection.weight").T.contiguous(),
    }
    for i in range(layers):
        hf, oc = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[oc + "attn.in_proj_" + p] = torch.cat(
                [sd.pop(f"{hf}self_attn.{x}_proj.{p}") for x in "qkv"], dim=0)
        for k in [k for k in sd if k.startswith(hf)]:
            rest = k[len(hf):]
            new = [o + rest[len(h):] for h, o in OPEN_CLIP_LAYER if rest.startswith(h)]
            if not new:
                raise KeyError(f"unmapped text_encoder_2 key {k}")
            out[oc + new[0]] = sd.pop(k)
    if sd:
        raise KeyError(f"unmapped text_encoder_2 keys {sorted(sd)}")
    # open_clip's initial temperature, ln(1/0.07); real SDXL files carry the trained value.
    dtype = out["ln_final.weight"].dtype
    out["logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=dtype)
    return out


def single_file_state_dict(pipe):
    unet_sd = {k: v for k, v in pipe.unet.state_dict().items()}
    sd, unet_rest = label_emb(unet_sd)
    sd.update(make_model.unet_to_ldm(unet_rest, dict(pipe.unet.config)))
    sd.update(make_model.vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    te = pipe.text_encoder
    for k, v in make_model.te_hub_state_dict(te).items():
        sd["conditioner.embedders.0.transformer." + k] = v
    pid = "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"
    sd.setdefault(pid, torch.arange(te.config.max_position_embeddings, dtype=torch.int64)[None])
    te2 = pipe.text_encoder_2
    te2_sd = {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
              for k, v in te2.state_dict().items()}
    for k, v in open_clip_state_dict(te2_sd, te2.config.num_hidden_layers).items():
        sd["conditioner.embedders.1.model." + k] = v
    return {k: v.contiguous() for k, v in sd.items()}


def text_encoders_via_diffusers(path, folder):
    """The two text encoders as diffusers' single-file conversion reads them from `path`."""
    from diffusers.loaders import single_file_utils as su
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    ckpt = load_file(path)
    converters = {
        "text_encoder": (CLIPTextModel,
                         lambda m: su.convert_ldm_clip_checkpoint(ckpt, "conditioner.embedders.0.transformer.")),
        "text_encoder_2": (CLIPTextModelWithProjection,
                           lambda m: su.convert_open_clip_checkpoint(m, ckpt, prefix="conditioner.embedders.1.model.")),
    }
    out = {}
    for name, (cls, convert) in converters.items():
        model = cls(cls.config_class.from_pretrained(folder, subfolder=name))
        sd = convert(model)
        if not hasattr(model, "text_model"):  # as create_diffusers_clip_model_from_ldm does
            sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]
        if missing or unexpected:
            raise RuntimeError(f"{name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        out[name] = model.eval()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("out")
    a = ap.parse_args()
    torch.set_num_threads(1)

    from diffusers import StableDiffusionXLPipeline

    # Loaded in the folder's own dtype, so that the file stores exactly its values.
    pipe = StableDiffusionXLPipeline.from_pretrained(a.folder, torch_dtype=torch.float16)
    sd = single_file_state_dict(pipe)
    # One metadata key: more would be written in hash-map order, making the bytes differ per run.
    save_file(sd, a.out, metadata={"format": "pt"})
    print(f"wrote {a.out} ({len(sd)} tensors)", flush=True)

    kw = dict(torch_dtype=torch.float32)
    ref = StableDiffusionXLPipeline.from_pretrained(a.folder, **kw)
    encoders = text_encoders_via_diffusers(a.out, a.folder)
    single = StableDiffusionXLPipeline.from_single_file(a.out, config=a.folder, local_files_only=True,
                                                        **encoders, **kw)
    compare_pipes(ref, single, "single file vs folder", COMPONENTS)


if __name__ == "__main__":
    main()
