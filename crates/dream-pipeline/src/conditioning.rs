//! Text conditioning from a prompt plan: each text's 75-token chunks through the CLIP text
//! encoder, weighted by emphasis, for every step of the run. This is A1111's
//! `FrozenCLIPEmbedderWithCustomWords` with `prompt_parser.get_learned_conditioning` (one
//! encoder batch per `AND` part, every schedule row in it), and its CFG combination of `AND`
//! parts (composable diffusion).
//!
//! All conditionings of a run have one length, so that the negative prompt and every `AND` part
//! go through the UNet as one batch: `AND` parts are lengthened by repeating their last vector
//! (A1111's `stack_conds`), and the negative prompt and the positive parts by the empty
//! prompt's chunks (A1111 with "Pad prompt/negative prompt to be same length" on).

use candle_core::{DType, Tensor};
use dream_core::prompt::chunking::{Chunk, Chunker};
use dream_core::prompt::{self, ConditioningPlan, PromptOptions, PromptText, SubPrompt, Syntax};
use dream_core::tokenizer::ClipTokenizer;
use dream_models::clip::ClipTextTransformer;

use crate::model::StableDiffusion;
use crate::DreamError;

/// How emphasis weights act on the text encoder's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emphasis {
    /// A1111's "Original": each token's vector is multiplied by its weight, then the whole batch
    /// is rescaled to the mean it had before.
    #[default]
    Original,
    /// A1111's "No norm": the multiplication alone.
    NoNorm,
    /// ComfyUI's: a weighted token's vector moves away from the empty prompt's vector at the
    /// same position, `empty + (z - empty) * weight`.
    ComfyUi,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditioningOptions {
    /// The prompt syntax and the number of steps prompt editing counts in.
    pub prompt: PromptOptions,
    /// A1111's "Clip skip": 1 is the text encoder's output; `n` takes the hidden state `n`
    /// layers from the end (counting the last) through the final LayerNorm.
    pub clip_skip: usize,
    pub emphasis: Emphasis,
}

impl ConditioningOptions {
    /// A1111's defaults: its syntax, clip skip 1, "Original" emphasis.
    pub fn new(steps: usize) -> Self {
        ConditioningOptions {
            prompt: PromptOptions::new(Syntax::A1111, steps),
            clip_skip: 1,
            emphasis: Emphasis::Original,
        }
    }
}

/// The encoded plan: for each step, the negative prompt's and each `AND` part's embeddings.
pub struct PromptConditioning {
    plan: ConditioningPlan,
    /// Per `AND` part, per distinct text of the part, `[1, L, D]`.
    positive: Vec<Vec<Tensor>>,
    /// Per distinct negative text, `[1, L, D]`.
    negative: Vec<Tensor>,
    /// `context_at` of every step when nothing changes during the run.
    constant: Option<Tensor>,
}

impl PromptConditioning {
    /// Encodes a conditioning plan with a tokenizer and a CLIP text encoder.
    pub fn encode(
        tokenizer: &ClipTokenizer,
        text_encoder: &ClipTextTransformer,
        plan: ConditioningPlan,
        options: &ConditioningOptions,
    ) -> Result<Self, DreamError> {
        if plan.syntax != Syntax::A1111 {
            return Err(DreamError::NotSupported(
                "conditioning for InvokeAI (compel) prompt weights".into(),
            ));
        }
        let encoder = TextEncoder {
            text_encoder,
            chunker: Chunker::new(tokenizer),
            options,
        };
        let mut positive = plan
            .positive
            .iter()
            .map(|part| encoder.sub_prompt(part))
            .collect::<Result<Vec<_>, _>>()?;
        let mut negative = encoder.sub_prompt(&plan.negative)?;

        let positive_len = positive
            .iter()
            .flatten()
            .map(token_count)
            .max()
            .unwrap_or(0);
        for text in positive.iter_mut().flatten() {
            *text = repeat_last_token(text, positive_len)?;
        }
        let negative_len = negative.iter().map(token_count).max().unwrap_or(0);
        let empty = encoder.empty_chunk()?;
        for text in negative.iter_mut() {
            *text = append_chunks(text, &empty, positive_len)?;
        }
        for text in positive.iter_mut().flatten() {
            *text = append_chunks(text, &empty, negative_len)?;
        }

        let mut conditioning = PromptConditioning {
            plan,
            positive,
            negative,
            constant: None,
        };
        if conditioning.plan.is_constant() {
            conditioning.constant = Some(conditioning.context_at(0)?);
        }
        Ok(conditioning)
    }

    pub fn plan(&self) -> &ConditioningPlan {
        &self.plan
    }

    /// The embeddings of `AND` part `part`'s text `text` (an index into its `texts`), `[1, L, D]`.
    pub fn positive(&self, part: usize, text: usize) -> Option<&Tensor> {
        self.positive.get(part)?.get(text)
    }

    /// The embeddings of the negative prompt's text `text`, `[1, L, D]`.
    pub fn negative(&self, text: usize) -> Option<&Tensor> {
        self.negative.get(text)
    }

    /// The UNet's text context for sampling step `step` (from 0): `[1 + parts, L, D]`, the
    /// negative prompt first, then each `AND` part.
    pub fn context_at(&self, step: usize) -> candle_core::Result<Tensor> {
        if let Some(context) = &self.constant {
            return Ok(context.clone());
        }
        let mut rows = vec![&self.negative[self.plan.negative.text_index_at(step)]];
        for (part, texts) in self.plan.positive.iter().zip(&self.positive) {
            rows.push(&texts[part.text_index_at(step)]);
        }
        Tensor::cat(&rows, 0)
    }

    /// Classifier-free guidance over a `context_at` batch's predictions `[1 + parts, …]`:
    /// `uncond + Σ (cond_i − uncond) · weight_i · cfg_scale`, added part by part as A1111's
    /// `combine_denoised` does. With one part of weight 1 this is plain CFG.
    pub fn guide(&self, predictions: &Tensor, cfg_scale: f64) -> candle_core::Result<Tensor> {
        let uncond = predictions.narrow(0, 0, 1)?;
        let mut guided = uncond.clone();
        for (i, part) in self.plan.positive.iter().enumerate() {
            let cond = predictions.narrow(0, i + 1, 1)?;
            guided = (guided + ((cond - &uncond)? * (part.weight * cfg_scale))?)?;
        }
        Ok(guided)
    }

    /// Whether the context is the same at every step.
    pub fn is_constant(&self) -> bool {
        self.constant.is_some()
    }
}

impl StableDiffusion {
    /// Reads the prompts and encodes them for every step of the run.
    pub fn condition(
        &self,
        prompt: &str,
        negative_prompt: &str,
        options: &ConditioningOptions,
    ) -> Result<PromptConditioning, DreamError> {
        let plan = prompt::plan(prompt, negative_prompt, &options.prompt)
            .map_err(|e| DreamError::InvalidRequest(e.to_string()))?;
        PromptConditioning::encode(&self.tokenizer, &self.text_encoder, plan, options)
    }
}

fn token_count(embeddings: &Tensor) -> usize {
    embeddings.dim(1).unwrap_or(0)
}

/// `[1, L, D]` lengthened to `len` tokens by repeating its last vector.
fn repeat_last_token(embeddings: &Tensor, len: usize) -> Result<Tensor, DreamError> {
    let current = token_count(embeddings);
    if current >= len {
        return Ok(embeddings.clone());
    }
    let last = embeddings.narrow(1, current - 1, 1)?;
    Ok(Tensor::cat(
        &[embeddings, &last.repeat((1, len - current, 1))?],
        1,
    )?)
}

/// `[1, L, D]` lengthened to `len` tokens (a multiple of a chunk) with copies of `chunk`.
fn append_chunks(embeddings: &Tensor, chunk: &Tensor, len: usize) -> Result<Tensor, DreamError> {
    let current = token_count(embeddings);
    let chunk_len = token_count(chunk);
    if current >= len || chunk_len == 0 {
        return Ok(embeddings.clone());
    }
    let copies = (len - current) / chunk_len;
    Ok(Tensor::cat(
        &[embeddings, &chunk.repeat((1, copies, 1))?],
        1,
    )?)
}

struct TextEncoder<'a> {
    text_encoder: &'a ClipTextTransformer,
    chunker: Chunker<'a>,
    options: &'a ConditioningOptions,
}

impl TextEncoder<'_> {
    /// The embeddings of each distinct text of a sub-prompt, `[1, L, D]` each, one length.
    ///
    /// As A1111 does, chunk `c` of every schedule row goes through the encoder in one batch (a
    /// row with fewer chunks gets the empty prompt's chunk), and "Original" emphasis restores
    /// the mean of that whole batch; rows that repeat a text count as often as they repeat.
    fn sub_prompt(&self, part: &SubPrompt) -> Result<Vec<Tensor>, DreamError> {
        let chunks = part
            .texts
            .iter()
            .map(|text| match text {
                PromptText::Fragments(fragments) => Ok(self.chunker.chunks(fragments)),
                PromptText::Blend { .. } | PromptText::Conjunction(_) => Err(
                    DreamError::NotSupported("blended prompts in A1111 syntax".into()),
                ),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut repeats = vec![0usize; part.texts.len()];
        for row in &part.schedule {
            repeats[row.text] += 1;
        }
        let empty = self.chunker.empty_chunk();
        let chunk_count = chunks.iter().map(Vec::len).max().unwrap_or(0);
        let mut per_text: Vec<Vec<Tensor>> = vec![Vec::new(); part.texts.len()];
        for c in 0..chunk_count {
            let batch: Vec<&Chunk> = chunks.iter().map(|t| t.get(c).unwrap_or(&empty)).collect();
            let z = self.weighted(&batch, &repeats)?;
            for (i, text) in per_text.iter_mut().enumerate() {
                text.push(z.narrow(0, i, 1)?);
            }
        }
        per_text
            .iter()
            .map(|text| Ok(Tensor::cat(text, 1)?))
            .collect()
    }

    /// The empty prompt's chunk, encoded: `[1, 77, D]`. Its weights are all 1, which every
    /// emphasis leaves as it is.
    fn empty_chunk(&self) -> Result<Tensor, DreamError> {
        self.encode(&[&self.chunker.empty_chunk()])
    }

    /// The text encoder's output for a batch of chunks, `[n, 77, D]`, at the clip skip layer.
    fn encode(&self, batch: &[&Chunk]) -> Result<Tensor, DreamError> {
        let ids: Vec<u32> = batch.iter().flat_map(|c| c.ids.iter().copied()).collect();
        let width = batch.first().map_or(0, |c| c.ids.len());
        let device = self.text_encoder.token_embedding().device();
        let ids = Tensor::from_vec(ids, (batch.len(), width), device)?;
        let output = self.text_encoder.forward(&ids)?;
        let skip = self.options.clip_skip;
        if skip <= 1 {
            return Ok(output.last_hidden_state);
        }
        let layers = output.hidden_states.len();
        let hidden = layers
            .checked_sub(skip)
            .map(|i| &output.hidden_states[i])
            .ok_or_else(|| {
                DreamError::InvalidRequest(format!(
                    "clip skip must be between 1 and {layers}, got {skip}"
                ))
            })?;
        Ok(self.text_encoder.final_layer_norm(hidden)?)
    }

    /// A batch of chunks encoded with their emphasis weights applied; `repeats[i]` is how many
    /// schedule rows chunk `i` stands for in the batch mean.
    fn weighted(&self, batch: &[&Chunk], repeats: &[usize]) -> Result<Tensor, DreamError> {
        let z = self.encode(batch)?;
        let weights: Vec<f32> = batch
            .iter()
            .flat_map(|c| c.weights.iter().map(|&w| w as f32))
            .collect();
        let width = batch.first().map_or(0, |c| c.weights.len());
        let weights =
            Tensor::from_vec(weights, (batch.len(), width, 1), z.device())?.to_dtype(z.dtype())?;
        Ok(match self.options.emphasis {
            Emphasis::NoNorm => z.broadcast_mul(&weights)?,
            Emphasis::Original => {
                let scaled = z.broadcast_mul(&weights)?;
                let ratio = batch_mean(&z, repeats)? / batch_mean(&scaled, repeats)?;
                (scaled * ratio)?
            }
            Emphasis::ComfyUi => {
                let empty = self.empty_chunk()?;
                let moved =
                    (z.broadcast_sub(&empty)?.broadcast_mul(&weights)?).broadcast_add(&empty)?;
                let unweighted = weights.ne(1.0)?.broadcast_as(z.shape())?;
                unweighted.where_cond(&moved, &z)?
            }
        })
    }
}

/// The mean of a batch `[n, …]` whose row `i` occurs `repeats[i]` times.
fn batch_mean(z: &Tensor, repeats: &[usize]) -> Result<f64, DreamError> {
    let rows = z
        .flatten_from(1)?
        .to_dtype(DType::F64)?
        .mean(1)?
        .to_vec1::<f64>()?;
    let total: usize = repeats.iter().sum();
    let sum: f64 = rows
        .iter()
        .zip(repeats)
        .map(|(&mean, &count)| mean * count as f64)
        .sum();
    Ok(sum / total.max(1) as f64)
}
