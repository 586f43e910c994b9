//! Tensor names of the other layouts Stable Diffusion weights come in, mapped onto diffusers'.
//!
//! The networks are written against diffusers' names (`down_blocks.0.resnets.1.conv1.weight`).
//! Single-file checkpoints (CompVis/RunwayML `.ckpt`, AUTOMATIC1111 and most model sites'
//! `.safetensors`) use the original latent-diffusion names instead
//! (`model.diffusion_model.input_blocks.2.0.in_layers.2.weight`); SDXL's (Stability's `sgm`
//! code) are the same but for its two text encoders under `conditioner.embedders.*` and the
//! `label_emb` of its added conditioning. Standalone VAE files use the
//! same names without their `first_stage_model.` prefix, and diffusers folders written before
//! diffusers 0.14 name the VAE attention `query/key/value/proj_attn`. This module turns all of
//! them into maps from diffusers names to [`Source`]s, the inverse of diffusers'
//! `convert_diffusers_to_original_stable_diffusion.py`.
//!
//! The UNet mapping needs `layers_per_block`, because latent-diffusion numbers the blocks of all
//! levels consecutively: level `i` of a UNet with `n` resnets per down level occupies
//! `input_blocks[i·(n+1)+1 ..= i·(n+1)+n]`, followed by its downsampler at `input_blocks[(i+1)·(n+1)]`;
//! up level `i` has `n+1` resnets at `output_blocks[i·(n+1) ..]`. [`unet_layers_per_block`]
//! recovers `n` from the names themselves.

use std::collections::BTreeMap;

/// Prefix of the UNet tensors in a single-file checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// Prefix of the VAE tensors in a single-file checkpoint.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// Prefix of an SD 1.x text encoder (OpenAI CLIP, in transformers' naming).
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// Prefix of an SD 2.x text encoder (OpenCLIP ViT-H/14).
pub const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";
/// Prefix of SDXL's text encoders.
pub const SDXL_CONDITIONER_PREFIX: &str = "conditioner.embedders.";
/// Prefix of SDXL's first text encoder (OpenAI CLIP ViT-L/14, in transformers' naming).
pub const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// Prefix of SDXL's second text encoder (OpenCLIP ViT-bigG/14).
pub const SDXL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";
/// Where the SDXL refiner keeps its only text encoder (OpenCLIP ViT-bigG/14).
pub const SDXL_REFINER_PREFIX: &str = "conditioner.embedders.0.model.";

/// Where one diffusers tensor is found in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The checkpoint's own name for it.
    pub key: String,
    /// Set when the checkpoint stores it fused with others (OpenCLIP's `in_proj_weight` holds q,
    /// k and v): the tensor is slice `index` of `of` equal slices along the first dimension.
    pub part: Option<Part>,
    /// Set when the checkpoint stores the transpose of a linear layer's `[out, in]` weight:
    /// OpenCLIP's `text_projection` is a `[width, projection]` matrix applied as `x @ P`.
    pub transposed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub of: usize,
}

impl Source {
    /// The tensor stored under `key`, as it is.
    pub fn whole(key: &str) -> Source {
        Source {
            key: key.to_owned(),
            part: None,
            transposed: false,
        }
    }
}

/// diffusers name → where it is stored.
pub type KeyMap = BTreeMap<String, Source>;

/// Which text encoder a single file carries (SDXL's first is OpenAI CLIP; its second, OpenCLIP
/// ViT-bigG/14, is always stored in OpenCLIP's layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderLayout {
    /// SD 1.x: OpenAI CLIP ViT-L/14, stored with transformers' names.
    OpenAiClip,
    /// SD 2.x: OpenCLIP ViT-H/14, stored with open_clip's names and fused attention projections.
    OpenClip,
}

/// A single-file checkpoint's tensors, split by network and renamed.
#[derive(Debug, Clone, PartialEq)]
pub struct SingleFileMap {
    pub unet: KeyMap,
    pub vae: KeyMap,
    /// The first text encoder; `None` for the SDXL refiner, which has only the second.
    pub text_encoder: Option<KeyMap>,
    /// SDXL's second text encoder, in transformers' `CLIPTextModelWithProjection` names.
    pub text_encoder_2: Option<KeyMap>,
    /// The first text encoder's layout (the SDXL refiner: its one encoder's, OpenCLIP).
    pub text_encoder_layout: TextEncoderLayout,
    pub layers_per_block: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyMapError {
    #[error("no model.diffusion_model.* tensors, so it is not a Stable Diffusion checkpoint")]
    NoUnet,
    #[error("no first_stage_model.* (VAE) tensors; a UNet-only file needs a separate VAE and text encoder, which single-file loading does not support")]
    NoVae,
    #[error("no cond_stage_model.* (text encoder) tensors; a UNet-only file needs a separate VAE and text encoder, which single-file loading does not support")]
    NoTextEncoder,
    #[error("no {prefix}* tensors: an SDXL checkpoint needs both of its text encoders")]
    NoSdxlTextEncoder { prefix: &'static str },
    #[error("cannot tell the UNet's layers per block from its input_blocks.* tensors")]
    UnetLayout,
    #[error("unrecognised {component} tensor {key}: not a Stable Diffusion 1.x/2.x/XL layout")]
    Unrecognised {
        component: &'static str,
        key: String,
    },
    #[error("no VAE tensors (encoder.*, decoder.*) found: not a VAE file")]
    NotVae,
}

/// Maps every tensor of an original latent-diffusion / A1111 checkpoint, SD 1.x, 2.x or XL.
/// Tensors outside the networks (the DDPM schedule buffers `betas`, `alphas_cumprod`…, EMA
/// copies under `model_ema.*`, OpenCLIP's `logit_scale`, and SD 2.x's unused `text_projection`)
/// are not needed and are left out; an unrecognised name *inside* a network's prefix is an
/// error, since it means an architecture this code does not know.
pub fn map_single_file(keys: &[&str]) -> Result<SingleFileMap, KeyMapError> {
    let with_prefix = |prefix: &str| -> Vec<&str> {
        keys.iter()
            .copied()
            .filter(|k| k.starts_with(prefix))
            .collect()
    };
    let sdxl = keys.iter().any(|k| k.starts_with(SDXL_CONDITIONER_PREFIX));
    let unet_keys: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(UNET_PREFIX))
        .collect();
    if unet_keys.is_empty() {
        return Err(KeyMapError::NoUnet);
    }
    let layers_per_block =
        unet_layers_per_block(unet_keys.iter().copied()).ok_or(KeyMapError::UnetLayout)?;
    let mut unet = KeyMap::new();
    for key in unet_keys {
        let full = format!("{UNET_PREFIX}{key}");
        let name = match sdxl {
            true => sdxl_added_conditioning(key),
            false => None,
        };
        let Some(name) = name.or_else(|| unet_ldm_to_diffusers(key, layers_per_block)) else {
            return Err(KeyMapError::Unrecognised {
                component: "UNet",
                key: full,
            });
        };
        unet.insert(name, Source::whole(&full));
    }

    let vae_keys = with_prefix(VAE_PREFIX);
    if vae_keys.is_empty() {
        return Err(KeyMapError::NoVae);
    }
    let vae = map_vae(vae_keys, VAE_PREFIX)?;

    let (text_encoder, text_encoder_2, text_encoder_layout) = if sdxl {
        let present = |prefix: &'static str| {
            let keys = with_prefix(prefix);
            match keys.is_empty() {
                true => Err(KeyMapError::NoSdxlTextEncoder { prefix }),
                false => Ok(keys),
            }
        };
        // The refiner's only encoder, OpenCLIP bigG, is embedders.0; the base's are CLIP and
        // OpenCLIP bigG.
        let refiner = with_prefix(SDXL_REFINER_PREFIX);
        let (clip, open_clip, prefixes, layout) = if refiner.is_empty() {
            let clip = map_clip(present(SDXL_CLIP_PREFIX)?, SDXL_CLIP_PREFIX);
            let open_clip =
                map_open_clip(present(SDXL_OPEN_CLIP_PREFIX)?, SDXL_OPEN_CLIP_PREFIX, true)?;
            let prefixes = [SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX];
            (
                Some(clip),
                open_clip,
                prefixes,
                TextEncoderLayout::OpenAiClip,
            )
        } else {
            let open_clip = map_open_clip(refiner, SDXL_REFINER_PREFIX, true)?;
            let prefixes = [SDXL_REFINER_PREFIX, SDXL_REFINER_PREFIX];
            (None, open_clip, prefixes, TextEncoderLayout::OpenClip)
        };
        if let Some(key) = with_prefix(SDXL_CONDITIONER_PREFIX)
            .into_iter()
            .find(|k| !prefixes.iter().any(|prefix| k.starts_with(prefix)))
        {
            return Err(KeyMapError::Unrecognised {
                component: "text encoder",
                key: key.to_owned(),
            });
        }
        (clip, Some(open_clip), layout)
    } else {
        let clip_keys = with_prefix(CLIP_PREFIX);
        let open_clip_keys = with_prefix(OPEN_CLIP_PREFIX);
        if !clip_keys.is_empty() {
            let clip = map_clip(clip_keys, CLIP_PREFIX);
            (Some(clip), None, TextEncoderLayout::OpenAiClip)
        } else if !open_clip_keys.is_empty() {
            let open_clip = map_open_clip(open_clip_keys, OPEN_CLIP_PREFIX, false)?;
            (Some(open_clip), None, TextEncoderLayout::OpenClip)
        } else {
            return Err(KeyMapError::NoTextEncoder);
        }
    };

    Ok(SingleFileMap {
        unet,
        vae,
        text_encoder,
        text_encoder_2,
        text_encoder_layout,
        layers_per_block,
    })
}

/// The diffusers name of SDXL's `label_emb`, the MLP that embeds the pooled text embedding and
/// the size/crop numbers (`add_embedding`), or `None` for any other UNet tensor.
fn sdxl_added_conditioning(key: &str) -> Option<String> {
    let table: &[(&str, &str)] = &[
        ("label_emb.0.0", "add_embedding.linear_1"),
        ("label_emb.0.2", "add_embedding.linear_2"),
    ];
    rename(key, table)
}

/// A CLIP text encoder stored with transformers' names under `prefix`.
fn map_clip(keys: Vec<&str>, prefix: &str) -> KeyMap {
    keys.into_iter()
        .filter_map(|key| Some((clip_to_diffusers(&key[prefix.len()..])?, Source::whole(key))))
        .collect()
}

/// An OpenCLIP text tower stored under `prefix`, in transformers' `CLIPTextModel` names, or,
/// `with_projection`, `CLIPTextModelWithProjection`'s: SDXL projects the pooled output of its
/// second encoder with OpenCLIP's `text_projection`, which SD 2.x leaves unused.
fn map_open_clip(
    keys: Vec<&str>,
    prefix: &str,
    with_projection: bool,
) -> Result<KeyMap, KeyMapError> {
    let mut map = KeyMap::new();
    for key in keys {
        let rest = &key[prefix.len()..];
        if with_projection && rest == "text_projection" {
            let source = Source {
                transposed: true,
                ..Source::whole(key)
            };
            map.insert("text_projection.weight".to_owned(), source);
            continue;
        }
        let Some(targets) = open_clip_to_diffusers(rest) else {
            return Err(KeyMapError::Unrecognised {
                component: "text encoder",
                key: key.to_owned(),
            });
        };
        for (name, part) in targets {
            let source = Source {
                part,
                ..Source::whole(key)
            };
            map.insert(name, source);
        }
    }
    Ok(map)
}

/// Maps a standalone VAE file: latent-diffusion names with or without the `first_stage_model.`
/// prefix (the `.vae.pt`/`.vae.safetensors` files A1111 users download), or diffusers names,
/// current or pre-0.14. Other tensors (the training loss's discriminator and LPIPS weights under
/// `loss.*`, EMA copies) are left out.
pub fn map_vae_file(keys: &[&str]) -> Result<KeyMap, KeyMapError> {
    let prefix = if keys.iter().any(|k| k.starts_with(VAE_PREFIX)) {
        VAE_PREFIX
    } else {
        ""
    };
    let vae_keys: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| {
            k.strip_prefix(prefix)
                .and_then(|rest| rest.split('.').next())
                .is_some_and(is_vae_root)
        })
        .collect();
    if vae_keys.is_empty() {
        return Err(KeyMapError::NotVae);
    }
    let diffusers_naming = vae_keys.iter().any(|k| {
        k.contains(".down_blocks.") || k.contains(".up_blocks.") || k.contains(".mid_block.")
    });
    if diffusers_naming {
        Ok(vae_keys
            .into_iter()
            .map(|k| {
                let name = &k[prefix.len()..];
                (vae_legacy_to_diffusers(name), Source::whole(k))
            })
            .collect())
    } else {
        map_vae(vae_keys, prefix)
    }
}

fn is_vae_root(first: &str) -> bool {
    matches!(
        first,
        "encoder" | "decoder" | "quant_conv" | "post_quant_conv"
    )
}

fn map_vae(keys: Vec<&str>, prefix: &str) -> Result<KeyMap, KeyMapError> {
    let levels = vae_levels(keys.iter().map(|k| &k[prefix.len()..]));
    let mut map = KeyMap::new();
    for key in keys {
        let rest = &key[prefix.len()..];
        let name = vae_ldm_to_diffusers(rest, levels).ok_or_else(|| KeyMapError::Unrecognised {
            component: "VAE",
            key: key.to_owned(),
        })?;
        map.insert(name, Source::whole(key));
    }
    Ok(map)
}

/// diffusers' resnet names ↔ latent-diffusion's `ResBlock` (UNet).
const UNET_RESNET: &[(&str, &str)] = &[
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
];

/// diffusers' resnet names ↔ latent-diffusion's `ResnetBlock` (VAE).
const VAE_RESNET: &[(&str, &str)] = &[
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("nin_shortcut", "conv_shortcut"),
];

/// diffusers' VAE mid-block attention names ↔ latent-diffusion's `AttnBlock`.
const VAE_ATTENTION: &[(&str, &str)] = &[
    ("norm", "group_norm"),
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("proj_out", "to_out.0"),
];

/// diffusers' pre-0.14 VAE attention names ↔ the current ones.
const VAE_LEGACY_ATTENTION: &[(&str, &str)] = &[
    ("query", "to_q"),
    ("key", "to_k"),
    ("value", "to_v"),
    ("proj_attn", "to_out.0"),
];

/// Renames the module path at the start of `rest` with `table`, keeping the parameter name.
fn rename(rest: &str, table: &[(&str, &str)]) -> Option<String> {
    table.iter().find_map(|(from, to)| {
        let param = rest.strip_prefix(from)?.strip_prefix('.')?;
        Some(format!("{to}.{param}"))
    })
}

fn index(part: Option<&str>) -> Option<usize> {
    part?.parse().ok()
}

/// The number of resnets per down level (`layers_per_block`) of a latent-diffusion UNet, from
/// its tensor names (without the `model.diffusion_model.` prefix): the first downsampler sits
/// at `input_blocks[n+1]`. A one-level UNet has none, and `n` input blocks after `conv_in`.
pub fn unet_layers_per_block<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<usize> {
    let mut first_downsampler: Option<usize> = None;
    let mut last_block = 0;
    for key in keys {
        let mut parts = key.split('.');
        if parts.next() != Some("input_blocks") {
            continue;
        }
        let Some(k) = index(parts.next()) else {
            continue;
        };
        last_block = last_block.max(k);
        if parts.next() == Some("0") && parts.next() == Some("op") {
            first_downsampler = Some(first_downsampler.map_or(k, |d| d.min(k)));
        }
    }
    match first_downsampler {
        Some(d) if d >= 2 => Some(d - 1),
        Some(_) => None,
        None if last_block >= 1 => Some(last_block),
        None => None,
    }
}

/// The diffusers name of a latent-diffusion UNet tensor (without the `model.diffusion_model.`
/// prefix), or `None` for a name outside SD 1.x/2.x's UNet.
pub fn unet_ldm_to_diffusers(key: &str, layers_per_block: usize) -> Option<String> {
    let fixed: &[(&str, &str)] = &[
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("input_blocks.0.0", "conv_in"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ];
    if let Some(name) = rename(key, fixed) {
        return Some(name);
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        return middle_block(rest);
    }
    let per_level = layers_per_block + 1;
    let [block, k, sub, rest] = key.splitn(4, '.').collect::<Vec<_>>()[..] else {
        return None;
    };
    let k: usize = k.parse().ok()?;
    match block {
        "input_blocks" if k == 0 => None,
        "input_blocks" => {
            let (level, j) = ((k - 1) / per_level, (k - 1) % per_level);
            match (sub, j == layers_per_block) {
                // The downsampler closes its level: input_blocks[(level+1)·(n+1)].
                ("0", true) => Some(format!(
                    "down_blocks.{level}.downsamplers.0.conv.{}",
                    rest.strip_prefix("op.")?
                )),
                ("0", false) => Some(format!(
                    "down_blocks.{level}.resnets.{j}.{}",
                    rename(rest, UNET_RESNET)?
                )),
                ("1", false) => Some(format!("down_blocks.{level}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        "output_blocks" => {
            let (level, j) = (k / per_level, k % per_level);
            // A `conv` module is the upsampler, the last module of the level's last block: at
            // index 2 after an attention, at index 1 when the level has none.
            if rest.starts_with("conv.") && (sub == "1" || sub == "2") {
                if j != layers_per_block {
                    return None;
                }
                return Some(format!("up_blocks.{level}.upsamplers.0.{rest}"));
            }
            match sub {
                "0" => Some(format!(
                    "up_blocks.{level}.resnets.{j}.{}",
                    rename(rest, UNET_RESNET)?
                )),
                "1" => Some(format!("up_blocks.{level}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `middle_block.{0,1,2}` = resnet, attention, resnet.
fn middle_block(rest: &str) -> Option<String> {
    let (k, rest) = rest.split_once('.')?;
    match k {
        "0" => Some(format!(
            "mid_block.resnets.0.{}",
            rename(rest, UNET_RESNET)?
        )),
        "1" => Some(format!("mid_block.attentions.0.{rest}")),
        "2" => Some(format!(
            "mid_block.resnets.1.{}",
            rename(rest, UNET_RESNET)?
        )),
        _ => None,
    }
}

/// The number of resolution levels of a latent-diffusion VAE (`encoder.down.{i}`), which the
/// mapping needs because the decoder numbers its levels bottom-up and diffusers top-down.
pub fn vae_levels<'a>(keys: impl IntoIterator<Item = &'a str>) -> usize {
    keys.into_iter()
        .filter_map(|k| index(k.strip_prefix("encoder.down.")?.split('.').next()))
        .max()
        .map_or(0, |i| i + 1)
}

/// The diffusers name of a latent-diffusion VAE tensor (without `first_stage_model.`).
pub fn vae_ldm_to_diffusers(key: &str, levels: usize) -> Option<String> {
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return Some(key.to_owned());
    }
    let (coder, rest) = key.split_once('.')?;
    if coder != "encoder" && coder != "decoder" {
        return None;
    }
    let mapped = if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_owned()
    } else if let Some(param) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{param}")
    } else if let Some(rest) = rest.strip_prefix("mid.") {
        let (module, rest) = rest.split_once('.')?;
        match module {
            "block_1" => format!("mid_block.resnets.0.{}", rename(rest, VAE_RESNET)?),
            "block_2" => format!("mid_block.resnets.1.{}", rename(rest, VAE_RESNET)?),
            "attn_1" => format!("mid_block.attentions.0.{}", rename(rest, VAE_ATTENTION)?),
            _ => return None,
        }
    } else {
        let (direction, rest) = rest.split_once('.')?;
        let (level, rest) = rest.split_once('.')?;
        let level: usize = level.parse().ok()?;
        let (blocks, level) = match direction {
            "down" => ("down_blocks", level),
            // The decoder's `up.0` is its last (highest-resolution) level.
            "up" => ("up_blocks", levels.checked_sub(level + 1)?),
            _ => return None,
        };
        let (module, rest) = rest.split_once('.')?;
        match module {
            "block" => {
                let (j, rest) = rest.split_once('.')?;
                let j: usize = j.parse().ok()?;
                format!("{blocks}.{level}.resnets.{j}.{}", rename(rest, VAE_RESNET)?)
            }
            "downsample" if direction == "down" => {
                format!("{blocks}.{level}.downsamplers.0.{rest}")
            }
            "upsample" if direction == "up" => format!("{blocks}.{level}.upsamplers.0.{rest}"),
            _ => return None,
        }
    };
    Some(format!("{coder}.{mapped}"))
}

/// A diffusers VAE name with the pre-0.14 attention names (`query`, `key`, `value`,
/// `proj_attn`) replaced by the current ones; other names are returned unchanged.
pub fn vae_legacy_to_diffusers(key: &str) -> String {
    const ATTENTION: &str = ".mid_block.attentions.0.";
    if let Some(at) = key.find(ATTENTION) {
        let (head, rest) = key.split_at(at + ATTENTION.len());
        if let Some(renamed) = rename(rest, VAE_LEGACY_ATTENTION) {
            return format!("{head}{renamed}");
        }
    }
    key.to_owned()
}

/// The transformers name of a CLIP text-encoder tensor (after `cond_stage_model.transformer.` in
/// an SD 1.x file), or `None` for the `position_ids` buffer, which is not a weight (transformers
/// recomputes it and does not save it). Checkpoints made with transformers < 4.x, and
/// transformers ≥ 5.6's `CLIPTextModel`, lack the `text_model.` level;
/// `CLIPTextModelWithProjection`'s `text_projection` sits beside it.
pub fn clip_to_diffusers(key: &str) -> Option<String> {
    if key.ends_with("embeddings.position_ids") {
        return None;
    }
    Some(
        if key.starts_with("text_model.") || key.starts_with("text_projection.") {
            key.to_owned()
        } else {
            format!("text_model.{key}")
        },
    )
}

/// The transformers `CLIPTextModel` names an OpenCLIP text-tower tensor (after
/// `cond_stage_model.model.`) feeds, with the slice each takes. `Some(vec![])` for tensors the
/// text model does not use (the contrastive head's `text_projection`, `logit_scale`, the causal
/// `attn_mask` buffer); `None` for a name that is not part of OpenCLIP's text tower.
pub fn open_clip_to_diffusers(key: &str) -> Option<Vec<(String, Option<Part>)>> {
    let whole = |name: String| Some(vec![(name, None)]);
    match key {
        "text_projection" | "logit_scale" | "attn_mask" => return Some(vec![]),
        "positional_embedding" => {
            return whole("text_model.embeddings.position_embedding.weight".into())
        }
        "token_embedding.weight" => {
            return whole("text_model.embeddings.token_embedding.weight".into())
        }
        _ => {}
    }
    if let Some(param) = key.strip_prefix("ln_final.") {
        return whole(format!("text_model.final_layer_norm.{param}"));
    }
    let rest = key.strip_prefix("transformer.resblocks.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let prefix = format!("text_model.encoder.layers.{layer}");
    let fused = |param: &str| {
        let parts = ["q_proj", "k_proj", "v_proj"].iter().enumerate();
        Some(
            parts
                .map(|(index, proj)| {
                    (
                        format!("{prefix}.self_attn.{proj}.{param}"),
                        Some(Part { index, of: 3 }),
                    )
                })
                .collect(),
        )
    };
    match rest {
        "attn.in_proj_weight" => fused("weight"),
        "attn.in_proj_bias" => fused("bias"),
        _ => {
            let table: &[(&str, &str)] = &[
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("attn.out_proj", "self_attn.out_proj"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ];
            whole(format!("{prefix}.{}", rename(rest, table)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The UNet input block names of SD 1.5 (4 levels, 2 layers per block), as in
    /// v1-5-pruned.safetensors, one tensor per module.
    const SD15_INPUT_BLOCKS: &[&str] = &[
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.1.proj_in.weight",
        "input_blocks.2.0.in_layers.0.weight",
        "input_blocks.2.1.proj_in.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.4.0.in_layers.0.weight",
        "input_blocks.4.1.proj_in.weight",
        "input_blocks.5.0.in_layers.0.weight",
        "input_blocks.5.1.proj_in.weight",
        "input_blocks.6.0.op.weight",
        "input_blocks.7.0.in_layers.0.weight",
        "input_blocks.7.1.proj_in.weight",
        "input_blocks.8.0.in_layers.0.weight",
        "input_blocks.8.1.proj_in.weight",
        "input_blocks.9.0.op.weight",
        "input_blocks.10.0.in_layers.0.weight",
        "input_blocks.11.0.in_layers.0.weight",
    ];

    #[test]
    fn sd15_unet_names() {
        assert_eq!(
            unet_layers_per_block(SD15_INPUT_BLOCKS.iter().copied()),
            Some(2)
        );
        // Pairs from diffusers' convert_original_stable_diffusion_to_diffusers tables for SD 1.5.
        let pairs = [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("input_blocks.0.0.bias", "conv_in.bias"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.0.emb_layers.1.weight",
                "down_blocks.0.resnets.1.time_emb_proj.weight",
            ),
            (
                "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.bias",
                "down_blocks.1.resnets.0.conv_shortcut.bias",
            ),
            (
                "input_blocks.9.0.op.bias",
                "down_blocks.2.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.11.0.out_layers.3.bias",
                "down_blocks.3.resnets.1.conv2.bias",
            ),
            (
                "middle_block.0.in_layers.2.weight",
                "mid_block.resnets.0.conv1.weight",
            ),
            (
                "middle_block.1.proj_out.weight",
                "mid_block.attentions.0.proj_out.weight",
            ),
            (
                "middle_block.2.emb_layers.1.weight",
                "mid_block.resnets.1.time_emb_proj.weight",
            ),
            (
                "output_blocks.0.0.out_layers.0.weight",
                "up_blocks.0.resnets.0.norm2.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.3.1.proj_in.weight",
                "up_blocks.1.attentions.0.proj_in.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.8.2.conv.weight",
                "up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
                "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight",
            ),
            (
                "output_blocks.11.0.skip_connection.weight",
                "up_blocks.3.resnets.2.conv_shortcut.weight",
            ),
            ("out.0.weight", "conv_norm_out.weight"),
            ("out.2.bias", "conv_out.bias"),
        ];
        for (ldm, diffusers) in pairs {
            assert_eq!(
                unet_ldm_to_diffusers(ldm, 2).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
        }
        for foreign in [
            "label_emb.0.0.weight",
            "input_blocks.3.1.proj_in.weight",
            "input_blocks.4.0.op.weight",
            "output_blocks.1.1.conv.weight",
            "middle_block.3.in_layers.0.weight",
        ] {
            assert_eq!(unet_ldm_to_diffusers(foreign, 2), None, "{foreign}");
        }
    }

    #[test]
    fn sd_vae_names() {
        let keys = [
            "encoder.down.0.block.0.conv1.weight",
            "encoder.down.3.block.1.conv1.weight",
        ];
        assert_eq!(vae_levels(keys), 4);
        let pairs = [
            ("quant_conv.weight", "quant_conv.weight"),
            ("post_quant_conv.bias", "post_quant_conv.bias"),
            ("encoder.conv_in.weight", "encoder.conv_in.weight"),
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.2.downsample.conv.bias",
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
            ),
            (
                "encoder.mid.block_2.norm2.weight",
                "encoder.mid_block.resnets.1.norm2.weight",
            ),
            (
                "encoder.mid.attn_1.norm.bias",
                "encoder.mid_block.attentions.0.group_norm.bias",
            ),
            (
                "encoder.mid.attn_1.q.weight",
                "encoder.mid_block.attentions.0.to_q.weight",
            ),
            (
                "decoder.mid.attn_1.proj_out.weight",
                "decoder.mid_block.attentions.0.to_out.0.weight",
            ),
            (
                "decoder.up.3.upsample.conv.weight",
                "decoder.up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "decoder.up.0.block.2.conv1.weight",
                "decoder.up_blocks.3.resnets.2.conv1.weight",
            ),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
        ];
        for (ldm, diffusers) in pairs {
            assert_eq!(
                vae_ldm_to_diffusers(ldm, 4).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
        }
        assert_eq!(
            vae_ldm_to_diffusers("decoder.up.4.block.0.conv1.weight", 4),
            None
        );
        assert_eq!(vae_ldm_to_diffusers("loss.logvar", 4), None);
        assert_eq!(
            vae_legacy_to_diffusers("decoder.mid_block.attentions.0.proj_attn.weight"),
            "decoder.mid_block.attentions.0.to_out.0.weight"
        );
        assert_eq!(
            vae_legacy_to_diffusers("encoder.mid_block.attentions.0.query.bias"),
            "encoder.mid_block.attentions.0.to_q.bias"
        );
        assert_eq!(
            vae_legacy_to_diffusers("encoder.down_blocks.0.resnets.0.conv1.weight"),
            "encoder.down_blocks.0.resnets.0.conv1.weight"
        );
    }

    #[test]
    fn text_encoder_names() {
        assert_eq!(
            clip_to_diffusers("text_model.encoder.layers.0.mlp.fc1.weight").as_deref(),
            Some("text_model.encoder.layers.0.mlp.fc1.weight")
        );
        assert_eq!(
            clip_to_diffusers("embeddings.token_embedding.weight").as_deref(),
            Some("text_model.embeddings.token_embedding.weight")
        );
        assert_eq!(
            clip_to_diffusers("text_model.embeddings.position_ids"),
            None
        );

        let fused = open_clip_to_diffusers("transformer.resblocks.3.attn.in_proj_weight").unwrap();
        let names: Vec<_> = fused
            .iter()
            .map(|(n, p)| (n.as_str(), p.unwrap().index))
            .collect();
        assert_eq!(
            names,
            [
                ("text_model.encoder.layers.3.self_attn.q_proj.weight", 0),
                ("text_model.encoder.layers.3.self_attn.k_proj.weight", 1),
                ("text_model.encoder.layers.3.self_attn.v_proj.weight", 2),
            ]
        );
        let one = |k: &str| {
            open_clip_to_diffusers(k).map(|v| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>())
        };
        assert_eq!(
            one("transformer.resblocks.0.mlp.c_fc.bias").unwrap(),
            ["text_model.encoder.layers.0.mlp.fc1.bias"]
        );
        assert_eq!(
            one("transformer.resblocks.22.ln_2.weight").unwrap(),
            ["text_model.encoder.layers.22.layer_norm2.weight"]
        );
        assert_eq!(
            one("positional_embedding").unwrap(),
            ["text_model.embeddings.position_embedding.weight"]
        );
        assert_eq!(
            one("ln_final.bias").unwrap(),
            ["text_model.final_layer_norm.bias"]
        );
        assert_eq!(one("text_projection").unwrap(), Vec::<String>::new());
        assert_eq!(one("visual.conv1.weight"), None);
    }

    #[test]
    fn single_file_errors() {
        assert_eq!(
            map_single_file(&["foo", "bar.weight"]),
            Err(KeyMapError::NoUnet)
        );
        let mut keys: Vec<String> = SD15_INPUT_BLOCKS
            .iter()
            .map(|k| format!("{UNET_PREFIX}{k}"))
            .collect();
        keys.push(format!("{VAE_PREFIX}encoder.down.0.block.0.conv1.weight"));
        fn refs(keys: &[String]) -> Vec<&str> {
            keys.iter().map(String::as_str).collect()
        }
        assert_eq!(
            map_single_file(&refs(&keys)),
            Err(KeyMapError::NoTextEncoder)
        );
        keys.push(format!("{CLIP_PREFIX}text_model.final_layer_norm.weight"));
        let map = map_single_file(&refs(&keys)).unwrap();
        assert_eq!(map.layers_per_block, 2);
        assert_eq!(map.text_encoder_layout, TextEncoderLayout::OpenAiClip);
        keys.push(format!("{UNET_PREFIX}label_emb.0.0.weight"));
        assert_eq!(
            map_single_file(&refs(&keys)),
            Err(KeyMapError::Unrecognised {
                component: "UNet",
                key: "model.diffusion_model.label_emb.0.0.weight".into()
            })
        );
    }

    /// The names of an SDXL base file (sd_xl_base_1.0.safetensors' layout: 3 levels, 2 layers
    /// per block), one or two tensors per module.
    fn sdxl_keys() -> Vec<String> {
        let unet = [
            "time_embed.0.weight",
            "label_emb.0.0.weight",
            "label_emb.0.2.bias",
            "input_blocks.0.0.weight",
            "input_blocks.1.0.in_layers.0.weight",
            "input_blocks.2.0.in_layers.0.weight",
            "input_blocks.3.0.op.weight",
            "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
            "input_blocks.6.0.op.weight",
            "input_blocks.8.1.transformer_blocks.9.attn1.to_q.weight",
            "middle_block.1.proj_in.weight",
            "output_blocks.2.2.conv.weight",
            "output_blocks.8.0.skip_connection.weight",
            "out.2.weight",
        ];
        let clip = [
            "text_model.embeddings.position_ids",
            "text_model.embeddings.token_embedding.weight",
            "text_model.encoder.layers.11.mlp.fc2.bias",
        ];
        let open_clip = [
            "positional_embedding",
            "text_projection",
            "logit_scale",
            "transformer.resblocks.31.attn.in_proj_bias",
            "ln_final.weight",
        ];
        let prefixed = |prefix: &str, names: &[&str]| -> Vec<String> {
            names.iter().map(|n| format!("{prefix}{n}")).collect()
        };
        [
            prefixed(UNET_PREFIX, &unet),
            prefixed(VAE_PREFIX, &["encoder.down.0.block.0.conv1.weight"]),
            prefixed(SDXL_CLIP_PREFIX, &clip),
            prefixed(SDXL_OPEN_CLIP_PREFIX, &open_clip),
        ]
        .concat()
    }

    #[test]
    fn sdxl_single_file_names() {
        let keys = sdxl_keys();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let map = map_single_file(&refs).unwrap();
        assert_eq!(map.layers_per_block, 2);
        assert_eq!(map.text_encoder_layout, TextEncoderLayout::OpenAiClip);
        // Pairs from diffusers' convert_diffusers_to_original_sdxl.py.
        for (diffusers, ldm) in [
            ("add_embedding.linear_1.weight", "label_emb.0.0.weight"),
            ("add_embedding.linear_2.bias", "label_emb.0.2.bias"),
            (
                "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight",
                "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
            ),
            (
                "down_blocks.2.attentions.1.transformer_blocks.9.attn1.to_q.weight",
                "input_blocks.8.1.transformer_blocks.9.attn1.to_q.weight",
            ),
            (
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.2.conv.weight",
            ),
            (
                "up_blocks.2.resnets.2.conv_shortcut.weight",
                "output_blocks.8.0.skip_connection.weight",
            ),
        ] {
            assert_eq!(
                map.unet[diffusers],
                Source::whole(&format!("{UNET_PREFIX}{ldm}")),
                "{diffusers}"
            );
        }
        assert_eq!(map.unet.len(), 14);
        let clip: Vec<&str> = map
            .text_encoder
            .as_ref()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            clip,
            [
                "text_model.embeddings.token_embedding.weight",
                "text_model.encoder.layers.11.mlp.fc2.bias",
            ]
        );
        let open_clip = map.text_encoder_2.unwrap();
        let projection = &open_clip["text_projection.weight"];
        assert_eq!(
            (projection.key.as_str(), projection.transposed),
            ("conditioner.embedders.1.model.text_projection", true)
        );
        let v = &open_clip["text_model.encoder.layers.31.self_attn.v_proj.bias"];
        assert_eq!(v.part, Some(Part { index: 2, of: 3 }));
        assert!(!v.transposed);
        // 3 fused projections, the positional embedding, ln_final and text_projection:
        // logit_scale is left out.
        assert_eq!(open_clip.len(), 6);

        let without = |prefix: &str| -> Vec<String> {
            keys.iter()
                .filter(|k| !k.starts_with(prefix))
                .cloned()
                .collect()
        };
        let refs = |keys: &[String]| -> Result<SingleFileMap, KeyMapError> {
            map_single_file(&keys.iter().map(String::as_str).collect::<Vec<_>>())
        };
        assert_eq!(
            refs(&without(SDXL_OPEN_CLIP_PREFIX)),
            Err(KeyMapError::NoSdxlTextEncoder {
                prefix: SDXL_OPEN_CLIP_PREFIX
            })
        );
        assert_eq!(
            refs(&without(SDXL_CLIP_PREFIX)),
            Err(KeyMapError::NoSdxlTextEncoder {
                prefix: SDXL_CLIP_PREFIX
            })
        );
        let mut extra = keys.clone();
        extra.push("conditioner.embedders.2.model.weight".into());
        assert_eq!(
            refs(&extra),
            Err(KeyMapError::Unrecognised {
                component: "text encoder",
                key: "conditioner.embedders.2.model.weight".into()
            })
        );
        // The refiner: OpenCLIP bigG alone, as embedders.0, mapped as the base's second.
        let refiner: Vec<String> = without("conditioner.")
            .into_iter()
            .chain(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(SDXL_OPEN_CLIP_PREFIX))
                    .map(|k| format!("{SDXL_REFINER_PREFIX}{k}")),
            )
            .collect();
        let map = refs(&refiner).unwrap();
        assert_eq!(map.text_encoder, None);
        let refiner_clip = map.text_encoder_2.unwrap();
        assert_eq!(
            refiner_clip.keys().collect::<Vec<_>>(),
            open_clip.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            refiner_clip["text_projection.weight"].key,
            "conditioner.embedders.0.model.text_projection"
        );
        let mut extra = refiner.clone();
        extra.push(format!(
            "{SDXL_CLIP_PREFIX}text_model.final_layer_norm.weight"
        ));
        assert_eq!(
            refs(&extra),
            Err(KeyMapError::Unrecognised {
                component: "text encoder",
                key: format!("{SDXL_CLIP_PREFIX}text_model.final_layer_norm.weight")
            })
        );
    }

    #[test]
    fn vae_files_in_every_naming() {
        let ldm = [
            "encoder.down.0.block.0.conv1.weight",
            "decoder.up.0.block.0.conv1.weight",
            "loss.logvar",
        ];
        let map = map_vae_file(&ldm).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(
            map["decoder.up_blocks.0.resnets.0.conv1.weight"].key,
            "decoder.up.0.block.0.conv1.weight"
        );

        let prefixed = [
            "first_stage_model.decoder.mid.attn_1.k.bias",
            "model.diffusion_model.out.2.bias",
        ];
        let map = map_vae_file(&prefixed).unwrap();
        assert_eq!(
            map["decoder.mid_block.attentions.0.to_k.bias"].key,
            prefixed[0]
        );
        assert_eq!(map.len(), 1);

        let legacy = [
            "decoder.mid_block.attentions.0.value.weight",
            "quant_conv.bias",
        ];
        let map = map_vae_file(&legacy).unwrap();
        assert_eq!(
            map["decoder.mid_block.attentions.0.to_v.weight"].key,
            legacy[0]
        );
        assert_eq!(map["quant_conv.bias"].key, legacy[1]);

        assert_eq!(
            map_vae_file(&["model.diffusion_model.out.2.bias"]),
            Err(KeyMapError::NotVae)
        );
    }
}
