//! Text conditioning from a prompt plan: each text's 75-token chunks through the CLIP text
//! encoder, weighted by emphasis, for every step of the run. For A1111 syntax this is A1111's
//! `FrozenCLIPEmbedderWithCustomWords` with `prompt_parser.get_learned_conditioning` (one
//! encoder batch per `AND` part, every schedule row in it), and its CFG combination of `AND`
//! parts (composable diffusion). For InvokeAI syntax it is compel's `EmbeddingsProvider` as
//! InvokeAI runs it (`truncate_long_prompts=False`, downweighting by masking).
//!
//! For SDXL, A1111's syntax is read as A1111 reads it for SDXL: each text goes through both
//! encoders (each with its own tokenizer, chunks and emphasis), their penultimate hidden states
//! are joined along the features, and the second encoder's pooled output of the first chunk is
//! the text's pooled embedding (`sd_hijack_clip` with `sgm`'s two embedders). InvokeAI syntax
//! is read as InvokeAI 3's SDXL prompt node runs compel: each encoder on its own, side by side,
//! and the pooled embedding of the prompt's text as written, truncated to 77 tokens.
//!
//! All conditionings of a run have one length, so that the negative prompt and every `AND` part
//! go through the UNet as one batch: `AND` parts are lengthened by repeating their last vector
//! (A1111's `stack_conds`), and the negative prompt and the positive parts by the empty
//! prompt's chunks (A1111 with "Pad prompt/negative prompt to be same length" on).

use candle_core::{DType, Tensor};
use dream_core::prompt::chunking::{Chunk, Chunker, CHUNK_TOKENS};
use dream_core::prompt::{
    self, ConditioningPlan, Fragment, PromptOptions, PromptText, SubPrompt, Syntax, TokenTable,
};
use dream_core::tokenizer::ClipTokenizer;
use dream_models::clip::{ClipTextModelWithProjection, ClipTextOutput, ClipTextTransformer};

use crate::model::StableDiffusion;
use crate::sdxl::SecondTextEncoder;
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
    /// layers from the end (counting the last) through the final LayerNorm. SDXL conditions on
    /// the penultimate layers without it, for 1 and 2 alike (see `Layer::Unnormalized`).
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

/// Textual-inversion embeddings that prompts can name: each a name (matched as
/// [`TokenTable`] describes) standing for one or more vectors in the text encoder's input space,
/// which replace the name's tokens before the encoder runs.
#[derive(Debug, Clone, Default)]
pub struct TextualInversions {
    table: Option<TokenTable>,
    /// Every embedding's vectors in id order, `[total, hidden]`.
    vectors: Option<Tensor>,
}

impl TextualInversions {
    /// Adds the embedding `name` with its `vectors` `[n, hidden]` for a model's tokenizer and
    /// text encoder.
    pub fn insert(
        &mut self,
        tokenizer: &ClipTokenizer,
        text_encoder: &ClipTextTransformer,
        name: &str,
        vectors: &Tensor,
    ) -> Result<(), DreamError> {
        let table_embeddings = text_encoder.token_embedding();
        let hidden = table_embeddings.dim(1)?;
        let (count, width) = match vectors.dims() {
            &[count, width] => (count, width),
            &[width] => (1, width),
            dims => {
                return Err(DreamError::InvalidRequest(format!(
                    "the embedding {name:?} has shape {dims:?}; expected [vectors, {hidden}]"
                )))
            }
        };
        if width != hidden {
            return Err(DreamError::InvalidRequest(format!(
                "the embedding {name:?} has vectors of {width} values; this model's text encoder takes {hidden}"
            )));
        }
        let table = self.table.get_or_insert_with(|| TokenTable::new(tokenizer));
        table
            .insert(tokenizer, name, count)
            .map_err(|e| DreamError::InvalidRequest(e.to_string()))?;
        let vectors = vectors
            .reshape((count, hidden))?
            .to_dtype(table_embeddings.dtype())?
            .to_device(table_embeddings.device())?;
        self.vectors = Some(match self.vectors.take() {
            Some(all) => Tensor::cat(&[&all, &vectors], 0)?,
            None => vectors,
        });
        Ok(())
    }

    /// A chunker that puts these embeddings' vectors where their names are.
    pub fn chunker<'a>(&'a self, tokenizer: &'a ClipTokenizer) -> Chunker<'a> {
        match &self.table {
            Some(table) => Chunker::new(tokenizer).with_token_table(table),
            None => Chunker::new(tokenizer),
        }
    }

    /// The names and the ids of their vectors.
    pub fn table(&self) -> Option<&TokenTable> {
        self.table.as_ref()
    }

    /// Token embeddings `[n, width, hidden]` for ids `[n · width]`: the text encoder's own rows,
    /// and the embeddings' vectors for ids past the vocabulary.
    fn embed(
        &self,
        token_embedding: &Tensor,
        ids: &[u32],
        shape: (usize, usize),
    ) -> Result<Tensor, DreamError> {
        let device = token_embedding.device();
        let lookup = |table: &Tensor, ids: Vec<u32>| -> Result<Tensor, DreamError> {
            let len = ids.len();
            Ok(table
                .index_select(&Tensor::from_vec(ids, len, device)?, 0)?
                .reshape((shape.0, shape.1, ()))?)
        };
        let (Some(table), Some(vectors)) = (&self.table, &self.vectors) else {
            return lookup(token_embedding, ids.to_vec());
        };
        let first = table.first_id();
        let own = lookup(
            token_embedding,
            ids.iter()
                .map(|&id| if id < first { id } else { 0 })
                .collect(),
        )?;
        let learned = lookup(
            vectors,
            ids.iter().map(|&id| id.saturating_sub(first)).collect(),
        )?;
        let is_learned: Vec<u8> = ids.iter().map(|&id| u8::from(id >= first)).collect();
        let is_learned = Tensor::from_vec(is_learned, (shape.0, shape.1, 1), device)?
            .broadcast_as(own.shape())?;
        Ok(is_learned.where_cond(&learned, &own)?)
    }
}

/// The encoded plan: for each step, the negative prompt's and each `AND` part's embeddings.
pub struct PromptConditioning {
    plan: ConditioningPlan,
    /// Per `AND` part, its distinct texts.
    positive: Vec<Texts>,
    /// The negative prompt's distinct texts.
    negative: Texts,
    /// `context_at` and `pooled_at` of every step when nothing changes during the run.
    constant: Option<(Tensor, Option<Tensor>)>,
}

/// The encodings of a sub-prompt's distinct texts.
struct Texts {
    /// Per text, `[1, L, D]`.
    context: Vec<Tensor>,
    /// SDXL: per text, the pooled embedding `[1, P]`; empty for SD 1.x/2.x.
    pooled: Vec<Tensor>,
}

/// The text encoders a model conditions on, and the rule for its empty negative prompt.
pub(crate) struct Encoders<'a> {
    /// The first encoder (`None`: the SDXL refiner, which has only the second).
    pub(crate) first: Option<(&'a ClipTokenizer, &'a ClipTextTransformer)>,
    pub(crate) embeddings: &'a TextualInversions,
    /// SDXL's second encoder: its tokenizer, embeddings and empty-negative rule, and the
    /// network.
    pub(crate) second: Option<(&'a SecondTextEncoder, &'a ClipTextModelWithProjection)>,
}

impl PromptConditioning {
    /// Encodes a conditioning plan with a tokenizer, a CLIP text encoder and the
    /// textual-inversion embeddings the prompts may name (an SD 1.x/2.x model's one encoder).
    pub fn encode(
        tokenizer: &ClipTokenizer,
        text_encoder: &ClipTextTransformer,
        embeddings: &TextualInversions,
        plan: ConditioningPlan,
        options: &ConditioningOptions,
    ) -> Result<Self, DreamError> {
        let encoders = Encoders {
            first: Some((tokenizer, text_encoder)),
            embeddings,
            second: None,
        };
        Self::encode_with(&encoders, plan, options)
    }

    /// Encodes a conditioning plan with a model's text encoders and the textual-inversion
    /// embeddings the prompts may name.
    pub(crate) fn encode_with(
        encoders: &Encoders,
        plan: ConditioningPlan,
        options: &ConditioningOptions,
    ) -> Result<Self, DreamError> {
        if plan.syntax == Syntax::InvokeAi && options.emphasis != Emphasis::Original {
            return Err(DreamError::NotSupported(
                "A1111's emphasis modes for InvokeAI prompts (compel weighs tokens its own way)"
                    .into(),
            ));
        }
        // SDXL reads its encoders' unnormalized layers, SD 1.x/2.x its one encoder's output.
        let layer = match encoders.second {
            Some(_) => Layer::Unnormalized,
            None => Layer::ClipSkip,
        };
        let first = encoders.first.map(|(tokenizer, text_encoder)| TextEncoder {
            tokenizer,
            text_encoder,
            projection: None,
            embeddings: encoders.embeddings,
            chunker: encoders.embeddings.chunker(tokenizer),
            options,
            layer,
        });
        let second = encoders
            .second
            .map(|(second_encoder, text_encoder)| TextEncoder {
                tokenizer: &second_encoder.tokenizer,
                text_encoder: text_encoder.text_model(),
                projection: Some(text_encoder),
                embeddings: &second_encoder.embeddings,
                chunker: second_encoder.embeddings.chunker(&second_encoder.tokenizer),
                options,
                layer,
            });
        let encoders = TextEncoders {
            encoders: first.into_iter().chain(second).collect(),
            zeros_for_empty_negative: encoders
                .second
                .is_some_and(|(second, _)| second.zeros_for_empty_negative),
        };
        let sub_prompt = |part: &SubPrompt, text: &str| match plan.syntax {
            Syntax::A1111 => encoders.sub_prompt(part),
            Syntax::InvokeAi => encoders.compel_sub_prompt(part, text),
        };
        let (positive_text, negative_text) = &plan.texts;
        let mut positive = plan
            .positive
            .iter()
            .map(|part| sub_prompt(part, positive_text))
            .collect::<Result<Vec<_>, _>>()?;
        let mut negative = sub_prompt(&plan.negative, negative_text)?;
        if negative_text.is_empty() && encoders.zeros_for_empty_negative {
            negative = negative.zeroed()?;
        }

        let positive_len = positive
            .iter()
            .flat_map(|part| &part.context)
            .map(token_count)
            .max()
            .unwrap_or(0);
        for text in positive.iter_mut().flat_map(|part| &mut part.context) {
            *text = repeat_last_token(text, positive_len)?;
        }
        let negative_len = negative.context.iter().map(token_count).max().unwrap_or(0);
        let empty = encoders.empty_chunk()?;
        for text in negative.context.iter_mut() {
            *text = append_chunks(text, &empty, positive_len)?;
        }
        for text in positive.iter_mut().flat_map(|part| &mut part.context) {
            *text = append_chunks(text, &empty, negative_len)?;
        }

        let mut conditioning = PromptConditioning {
            plan,
            positive,
            negative,
            constant: None,
        };
        if conditioning.plan.is_constant() {
            conditioning.constant = Some((conditioning.context_at(0)?, conditioning.pooled_at(0)?));
        }
        Ok(conditioning)
    }

    pub fn plan(&self) -> &ConditioningPlan {
        &self.plan
    }

    /// The embeddings of `AND` part `part`'s text `text` (an index into its `texts`), `[1, L, D]`.
    pub fn positive(&self, part: usize, text: usize) -> Option<&Tensor> {
        self.positive.get(part)?.context.get(text)
    }

    /// The embeddings of the negative prompt's text `text`, `[1, L, D]`.
    pub fn negative(&self, text: usize) -> Option<&Tensor> {
        self.negative.context.get(text)
    }

    /// SDXL: the pooled embedding of `AND` part `part`'s text `text`, `[1, P]`.
    pub fn positive_pooled(&self, part: usize, text: usize) -> Option<&Tensor> {
        self.positive.get(part)?.pooled.get(text)
    }

    /// SDXL: the pooled embedding of the negative prompt's text `text`, `[1, P]`.
    pub fn negative_pooled(&self, text: usize) -> Option<&Tensor> {
        self.negative.pooled.get(text)
    }

    /// The UNet's text context for sampling step `step` (from 0): `[1 + parts, L, D]`, the
    /// negative prompt first, then each `AND` part.
    pub fn context_at(&self, step: usize) -> candle_core::Result<Tensor> {
        if let Some((context, _)) = &self.constant {
            return Ok(context.clone());
        }
        self.rows_at(step, |texts| &texts.context)
    }

    /// SDXL's pooled embeddings for sampling step `step`, `[1 + parts, P]` in the order of
    /// [`Self::context_at`]; `None` for models without them.
    pub fn pooled_at(&self, step: usize) -> candle_core::Result<Option<Tensor>> {
        if let Some((_, pooled)) = &self.constant {
            return Ok(pooled.clone());
        }
        if self.negative.pooled.is_empty() {
            return Ok(None);
        }
        self.rows_at(step, |texts| &texts.pooled).map(Some)
    }

    /// The negative prompt's and each `AND` part's tensor of `step`, stacked.
    fn rows_at(
        &self,
        step: usize,
        of: impl Fn(&Texts) -> &Vec<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mut rows = vec![&of(&self.negative)[self.plan.negative.text_index_at(step)]];
        for (part, texts) in self.plan.positive.iter().zip(&self.positive) {
            rows.push(&of(texts)[part.text_index_at(step)]);
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
        let text_encoder = match &self.text_encoder {
            Some(text_encoder) => Some(text_encoder.get()?),
            None => None,
        };
        let second = match &self.text_encoder_2 {
            Some(second) => Some((second, second.text_encoder.get()?)),
            None => None,
        };
        let encoders = Encoders {
            first: text_encoder
                .as_ref()
                .map(|text_encoder| (&self.tokenizer, &**text_encoder)),
            embeddings: &self.embeddings,
            second: second
                .as_ref()
                .map(|(second, text_encoder)| (*second, &**text_encoder)),
        };
        PromptConditioning::encode_with(&encoders, plan, options)
    }

    /// `-t`: how the text encoder sees the prompts (see [`prompt::tokenization_log`]).
    pub fn tokenization_log(
        &self,
        prompt: &str,
        negative_prompt: &str,
        options: &PromptOptions,
    ) -> Result<String, DreamError> {
        let plan = prompt::plan(prompt, negative_prompt, options)
            .map_err(|e| DreamError::InvalidRequest(e.to_string()))?;
        Ok(prompt::tokenization_log(
            &plan,
            &self.embeddings.chunker(&self.tokenizer),
        ))
    }

    /// Adds a textual-inversion embedding, `[vectors, hidden]`, that prompts can name: A1111
    /// prompts by `name` as a word, InvokeAI prompts as `<name>`. SDXL models take a pair
    /// ([`Self::add_sdxl_embedding`]).
    pub fn add_embedding(&mut self, name: &str, vectors: &Tensor) -> Result<(), DreamError> {
        if self.text_encoder_2.is_some() {
            return Err(DreamError::InvalidRequest(format!(
                "the embedding {name:?} has one set of vectors; SDXL embeddings have two, \
                 clip_l and clip_g (add_sdxl_embedding)"
            )));
        }
        let text_encoder = match &self.text_encoder {
            Some(text_encoder) => text_encoder.get()?,
            None => return Err(refiner_embedding(name)),
        };
        self.embeddings
            .insert(&self.tokenizer, &text_encoder, name, vectors)
    }

    /// Adds an SDXL textual-inversion embedding as A1111 stores it: `clip_l` `[n, 768]` for the
    /// first text encoder and `clip_g` `[n, 1280]` for the second, the same `n` vectors in
    /// each encoder's input space.
    pub fn add_sdxl_embedding(
        &mut self,
        name: &str,
        clip_l: &Tensor,
        clip_g: &Tensor,
    ) -> Result<(), DreamError> {
        let Some(second) = &mut self.text_encoder_2 else {
            return Err(DreamError::InvalidRequest(format!(
                "the embedding {name:?} is an SDXL embedding (clip_l, clip_g); this model is not SDXL"
            )));
        };
        let count = |t: &Tensor| {
            if t.rank() == 1 {
                1
            } else {
                t.dim(0).unwrap_or(0)
            }
        };
        if count(clip_l) != count(clip_g) {
            return Err(DreamError::InvalidRequest(format!(
                "the embedding {name:?} has {} clip_l and {} clip_g vectors; they must pair up",
                count(clip_l),
                count(clip_g)
            )));
        }
        // Both tables take the name, or neither: the first is restored if the second refuses.
        let first_table = self.embeddings.clone();
        let text_encoder = match &self.text_encoder {
            Some(text_encoder) => text_encoder.get()?,
            None => return Err(refiner_embedding(name)),
        };
        self.embeddings
            .insert(&self.tokenizer, &text_encoder, name, clip_l)?;
        let text_encoder_2 = second.text_encoder.get()?;
        let inserted =
            second
                .embeddings
                .insert(&second.tokenizer, text_encoder_2.text_model(), name, clip_g);
        if inserted.is_err() {
            self.embeddings = first_table;
        }
        inserted
    }
}

/// The refusal of textual inversion for the SDXL refiner, which has no first text encoder.
fn refiner_embedding(name: &str) -> DreamError {
    DreamError::NotSupported(format!(
        "the embedding {name:?} with the SDXL refiner (textual inversion for a model with only \
         the second text encoder)"
    ))
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

impl Texts {
    /// The same texts conditioning with zeros (SDXL's empty negative prompt).
    fn zeroed(&self) -> Result<Texts, DreamError> {
        let zeros = |tensors: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
            tensors.iter().map(Tensor::zeros_like).collect()
        };
        Ok(Texts {
            context: zeros(&self.context)?,
            pooled: zeros(&self.pooled)?,
        })
    }
}

/// A model's text encoders: SD 1.x/2.x's one, SDXL's two side by side, or the SDXL refiner's
/// one (SDXL's second).
struct TextEncoders<'a> {
    /// In the order their sequences are joined; SDXL's second encoder, with its projection,
    /// gives the pooled embeddings.
    encoders: Vec<TextEncoder<'a>>,
    /// Whether an empty negative prompt conditions with zeros (SDXL).
    zeros_for_empty_negative: bool,
}

impl TextEncoders<'_> {
    /// A1111 syntax: each encoder reads the texts with its own tokenizer and weighs them on its
    /// own; the sequences are joined along the features, and the pooled embeddings are the
    /// projecting encoder's.
    fn sub_prompt(&self, part: &SubPrompt) -> Result<Texts, DreamError> {
        let texts = self
            .encoders
            .iter()
            .map(|encoder| encoder.sub_prompt(part))
            .collect::<Result<Vec<_>, _>>()?;
        join_texts(texts)
    }

    /// InvokeAI syntax: compel reads the texts with each encoder on its own; the sequences are
    /// joined along the features, and the pooled embedding is the projecting encoder's of
    /// `text` as written (InvokeAI 3's SDXL prompt node).
    fn compel_sub_prompt(&self, part: &SubPrompt, text: &str) -> Result<Texts, DreamError> {
        let texts = self
            .encoders
            .iter()
            .map(|encoder| encoder.compel_sub_prompt(part))
            .collect::<Result<Vec<_>, _>>()?;
        let mut joined = join_texts(texts)?;
        if let Some(projecting) = self.encoders.iter().find(|e| e.projection.is_some()) {
            joined.pooled = vec![projecting.pooled_of_text(text)?; joined.context.len()];
        }
        Ok(joined)
    }

    /// The empty prompt's chunk through every encoder, `[1, 77, D]`.
    fn empty_chunk(&self) -> Result<Tensor, DreamError> {
        let chunks = self
            .encoders
            .iter()
            .map(TextEncoder::empty_chunk)
            .collect::<Result<Vec<_>, _>>()?;
        join_all(chunks)
    }
}

/// Each text's sequences from every encoder joined along the features, and the pooled
/// embeddings of the encoder that has them.
fn join_texts(texts: Vec<Texts>) -> Result<Texts, DreamError> {
    let pooled = texts
        .iter()
        .map(|t| t.pooled.clone())
        .find(|pooled| !pooled.is_empty())
        .unwrap_or_default();
    let count = texts.first().map_or(0, |t| t.context.len());
    let context = (0..count)
        .map(|i| join_all(texts.iter().map(|t| t.context[i].clone()).collect()))
        .collect::<Result<_, _>>()?;
    Ok(Texts { context, pooled })
}

/// One text's sequences from every encoder, joined along the features.
fn join_all(sequences: Vec<Tensor>) -> Result<Tensor, DreamError> {
    let mut sequences = sequences.into_iter();
    let first = sequences
        .next()
        .ok_or_else(|| DreamError::InvalidRequest("a model without a text encoder".into()))?;
    sequences.try_fold(first, |joined, next| side_by_side(&joined, &next))
}

/// Two encoders' sequences for one text joined along the features: `[1, L, D₁ + D₂]`.
fn side_by_side(first: &Tensor, second: &Tensor) -> Result<Tensor, DreamError> {
    let (a, b) = (token_count(first), token_count(second));
    if a != b {
        return Err(DreamError::InvalidRequest(format!(
            "the two tokenizers split the prompt differently ({a} and {b} tokens)"
        )));
    }
    Ok(Tensor::cat(&[first, second], 2)?)
}

/// Which hidden state of the encoder conditions the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    /// SD 1.x/2.x: the output through the final LayerNorm, or with A1111's clip skip an
    /// earlier layer's output through it.
    ClipSkip,
    /// SDXL: a layer's output as it is, without the final LayerNorm: the penultimate one for
    /// clip skip 1 and 2 (A1111 ignores clip skip for SDXL, and 2 names SDXL's own layer),
    /// `n` layers from the end for clip skip `n` > 2, as diffusers, ComfyUI and InvokeAI skip
    /// layers of both encoders.
    Unnormalized,
}

struct TextEncoder<'a> {
    tokenizer: &'a ClipTokenizer,
    text_encoder: &'a ClipTextTransformer,
    /// SDXL's second encoder: the projection of its pooled output.
    projection: Option<&'a ClipTextModelWithProjection>,
    /// The textual-inversion embeddings the chunker knows.
    embeddings: &'a TextualInversions,
    chunker: Chunker<'a>,
    options: &'a ConditioningOptions,
    layer: Layer,
}

impl TextEncoder<'_> {
    /// The embeddings of each distinct text of a sub-prompt, `[1, L, D]` each, one length, and
    /// with a projection their pooled embeddings, from each text's first chunk as A1111 takes
    /// them.
    ///
    /// As A1111 does, chunk `c` of every schedule row goes through the encoder in one batch (a
    /// row with fewer chunks gets the empty prompt's chunk), and "Original" emphasis restores
    /// the mean of that whole batch; rows that repeat a text count as often as they repeat.
    fn sub_prompt(&self, part: &SubPrompt) -> Result<Texts, DreamError> {
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
        let mut pooled = Vec::new();
        for c in 0..chunk_count {
            let batch: Vec<&Chunk> = chunks.iter().map(|t| t.get(c).unwrap_or(&empty)).collect();
            let (z, batch_pooled) = self.weighted(&batch, &repeats)?;
            for (i, text) in per_text.iter_mut().enumerate() {
                text.push(z.narrow(0, i, 1)?);
            }
            if let (0, Some(batch_pooled)) = (c, batch_pooled) {
                pooled = (0..part.texts.len())
                    .map(|i| batch_pooled.narrow(0, i, 1))
                    .collect::<candle_core::Result<_>>()?;
            }
        }
        let context = per_text
            .iter()
            .map(|text| Tensor::cat(text, 1))
            .collect::<candle_core::Result<_>>()?;
        Ok(Texts { context, pooled })
    }

    /// The embeddings of each distinct text of a sub-prompt, as compel encodes them.
    fn compel_sub_prompt(&self, part: &SubPrompt) -> Result<Texts, DreamError> {
        let context = part
            .texts
            .iter()
            .map(|text| self.compel_text(text))
            .collect::<Result<_, _>>()?;
        Ok(Texts {
            context,
            pooled: Vec::new(),
        })
    }

    /// compel's conditioning of a prompt, a `.blend()` or an `.and()`: `[1, L, D]`.
    fn compel_text(&self, text: &PromptText) -> Result<Tensor, DreamError> {
        match text {
            PromptText::Fragments(fragments) => self.compel_fragments(fragments),
            PromptText::Blend { parts, normalize } => {
                let mut encoded = parts
                    .iter()
                    .map(|part| self.compel_fragments(&part.fragments))
                    .collect::<Result<Vec<_>, _>>()?;
                let len = encoded.iter().map(token_count).max().unwrap_or(0);
                let empty = self.empty_chunk()?;
                for part in encoded.iter_mut() {
                    *part = append_chunks(part, &empty, len)?;
                }
                let mut weights: Vec<f32> = parts.iter().map(|p| p.weight as f32).collect();
                if *normalize {
                    let sum: f32 = weights.iter().sum();
                    if sum == 0.0 || !sum.is_finite() {
                        return Err(DreamError::InvalidRequest(format!(
                            "the blend weights {weights:?} add up to {sum}, which cannot be divided by"
                        )));
                    }
                    weights.iter_mut().for_each(|w| *w /= sum);
                }
                weighted_sum(&encoded, &weights)
            }
            PromptText::Conjunction(parts) => {
                let empty = self.empty_chunk()?;
                let encoded = parts
                    .iter()
                    .map(|part| {
                        let c = self.compel_fragments(&part.fragments)?;
                        if part.weight == 1.0 {
                            return Ok(c);
                        }
                        let empty = empty.repeat((1, token_count(&c) / token_count(&empty), 1))?;
                        Ok(((c - &empty)? * part.weight)?.add(&empty)?)
                    })
                    .collect::<Result<Vec<_>, DreamError>>()?;
                Ok(Tensor::cat(&encoded, 1)?)
            }
        }
    }

    /// compel's `get_embeddings_for_weighted_prompt_fragments`: each token moved from the empty
    /// prompt's conditioning by its weight; then, for each fragment weighing less than 1, a lerp
    /// towards the prompt encoded with that fragment masked out of attention, by
    /// `tan((1 − weight)·π/2)` against 1 for the prompt itself, so that a fragment of weight 0.5
    /// sits halfway between having and lacking it.
    fn compel_fragments(&self, fragments: &[Fragment]) -> Result<Tensor, DreamError> {
        /// compel's floor on a weight before the tangent, which is infinite at 0.
        const LEAST_WEIGHT: f64 = 1e-5;
        let empty_prompt = [Fragment::text("", 1.0)];
        let fragments = if fragments.is_empty() {
            &empty_prompt[..]
        } else {
            fragments
        };
        let layout = self.chunker.compel_chunks(fragments);
        let chunk_len = CHUNK_TOKENS + 2;
        let len = layout.chunks.len() * chunk_len;
        let mut masks = vec![vec![1u8; len]];
        let mut lerp_weights = vec![1.0f64];
        for (fragment, position) in fragments.iter().zip(&layout.fragment_positions) {
            let Fragment::Text { weight, .. } = fragment else {
                continue;
            };
            if *weight >= 1.0 {
                continue;
            }
            let mut mask = vec![1u8; len];
            if let Some((first, last)) = *position {
                mask[first..=last].fill(0);
                // A masked run across chunks keeps each chunk's first and last position.
                for chunk in 0..layout.chunks.len() {
                    mask[chunk * chunk_len] = 1;
                    mask[chunk * chunk_len + chunk_len - 1] = 1;
                }
            }
            masks.push(mask);
            lerp_weights
                .push(((1.0 - weight.max(LEAST_WEIGHT)) * std::f64::consts::FRAC_PI_2).tan());
        }
        let batch: Vec<&Chunk> = masks.iter().flat_map(|_| &layout.chunks).collect();
        let device = self.text_encoder.token_embedding().device();
        let mask = Tensor::from_vec(masks.concat(), (batch.len(), chunk_len), device)?;
        let z = self.encode_masked(&batch, Some(&mask))?;
        let z = self.move_from_empty(&z, &weights_of(&batch, &z)?)?;
        // One row per variant: [variants, chunks·77, D].
        let variants = z.reshape((masks.len(), len, z.dim(2)?))?;
        let sum: f64 = lerp_weights.iter().sum();
        let lerp_weights: Vec<f32> = lerp_weights.iter().map(|w| (w / sum) as f32).collect();
        let rows = (0..masks.len())
            .map(|i| variants.narrow(0, i, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        weighted_sum(&rows, &lerp_weights)
    }

    /// ComfyUI's emphasis and compel's weighting: a token weighing `w` ≠ 1 moves from the empty
    /// prompt's vector at its position, `empty + (z − empty)·w`; the others stay as they are.
    fn move_from_empty(&self, z: &Tensor, weights: &Tensor) -> Result<Tensor, DreamError> {
        let empty = self.empty_chunk()?;
        let moved = (z.broadcast_sub(&empty)?.broadcast_mul(weights)?).broadcast_add(&empty)?;
        let weighted = weights.ne(1.0)?.broadcast_as(z.shape())?;
        Ok(weighted.where_cond(&moved, z)?)
    }

    /// The empty prompt's chunk, encoded: `[1, 77, D]`. Its weights are all 1, which every
    /// emphasis leaves as it is.
    fn empty_chunk(&self) -> Result<Tensor, DreamError> {
        self.encode(&[&self.chunker.empty_chunk()])
    }

    /// The text encoder's output for a batch of chunks, `[n, 77, D]`, at its conditioning layer.
    fn encode(&self, batch: &[&Chunk]) -> Result<Tensor, DreamError> {
        self.encode_masked(batch, None)
    }

    /// [`Self::encode`] with an attention mask `[n, 77]` (1 to attend, 0 to ignore).
    fn encode_masked(&self, batch: &[&Chunk], mask: Option<&Tensor>) -> Result<Tensor, DreamError> {
        Ok(self.encode_pooled(batch, mask)?.0)
    }

    /// [`Self::encode_masked`], and with a projection the pooled embeddings `[n, P]`.
    fn encode_pooled(
        &self,
        batch: &[&Chunk],
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>), DreamError> {
        let ids: Vec<u32> = batch.iter().flat_map(|c| c.ids.iter().copied()).collect();
        let shape = (batch.len(), batch.first().map_or(0, |c| c.ids.len()));
        let embeddings = self
            .embeddings
            .embed(self.text_encoder.token_embedding(), &ids, shape)?;
        let output = self.text_encoder.forward_embeddings(&embeddings, mask)?;
        let pooled = match self.projection {
            Some(projection) => {
                // A1111 leaves id 0 where an embedding's vectors go, so the end-of-text token
                // stays the highest id, where the pooled output is read.
                let vocab = self.text_encoder.token_embedding().dim(0)? as u32;
                let ids: Vec<u32> = ids
                    .into_iter()
                    .map(|id| if id < vocab { id } else { 0 })
                    .collect();
                let ids = Tensor::from_vec(ids, shape, &candle_core::Device::Cpu)?;
                let positions = self.text_encoder.eos_positions(&ids)?;
                Some(projection.text_embeds(&output, &positions)?)
            }
            None => None,
        };
        Ok((self.conditioning_layer(output)?, pooled))
    }

    /// compel's pooled embedding of `text` as written (weighting syntax and all), truncated to
    /// one sequence: `[1, P]`.
    fn pooled_of_text(&self, text: &str) -> Result<Tensor, DreamError> {
        let ids = self.tokenizer.encode_for_clip(text, CHUNK_TOKENS + 2).ids;
        let chunk = Chunk {
            weights: vec![1.0; ids.len()],
            ids,
        };
        self.encode_pooled(&[&chunk], None)?.1.ok_or_else(|| {
            DreamError::InvalidRequest("this text encoder has no pooled output".into())
        })
    }

    /// The hidden state that conditions the UNet (see [`Layer`]).
    fn conditioning_layer(&self, output: ClipTextOutput) -> Result<Tensor, DreamError> {
        let layers = output.hidden_states.len();
        let skip = self.options.clip_skip;
        let from_end = |n: usize| {
            layers
                .checked_sub(n)
                .map(|i| &output.hidden_states[i])
                .ok_or_else(|| {
                    DreamError::InvalidRequest(format!(
                        "clip skip must be between 1 and {layers}, got {skip}"
                    ))
                })
        };
        match self.layer {
            Layer::Unnormalized => Ok(from_end(skip.max(2))?.clone()),
            Layer::ClipSkip if skip <= 1 => Ok(output.last_hidden_state),
            Layer::ClipSkip => Ok(self.text_encoder.final_layer_norm(from_end(skip)?)?),
        }
    }

    /// A batch of chunks encoded with their emphasis weights applied, and their pooled
    /// embeddings (which emphasis leaves alone, as in A1111); `repeats[i]` is how many schedule
    /// rows chunk `i` stands for in the batch mean.
    fn weighted(
        &self,
        batch: &[&Chunk],
        repeats: &[usize],
    ) -> Result<(Tensor, Option<Tensor>), DreamError> {
        let (z, pooled) = self.encode_pooled(batch, None)?;
        let weights = weights_of(batch, &z)?;
        let z = match self.options.emphasis {
            Emphasis::NoNorm => z.broadcast_mul(&weights)?,
            Emphasis::Original => {
                let scaled = z.broadcast_mul(&weights)?;
                let ratio = batch_mean(&z, repeats)? / batch_mean(&scaled, repeats)?;
                (scaled * ratio)?
            }
            Emphasis::ComfyUi => self.move_from_empty(&z, &weights)?,
        };
        Ok((z, pooled))
    }
}

/// The chunks' emphasis weights `[n, 77, 1]` in the dtype of their encoding `z`.
fn weights_of(batch: &[&Chunk], z: &Tensor) -> Result<Tensor, DreamError> {
    let weights: Vec<f32> = batch
        .iter()
        .flat_map(|c| c.weights.iter().map(|&w| w as f32))
        .collect();
    let width = batch.first().map_or(0, |c| c.weights.len());
    Ok(Tensor::from_vec(weights, (batch.len(), width, 1), z.device())?.to_dtype(z.dtype())?)
}

/// `Σ weights[i] · tensors[i]` over tensors of one shape (compel's `apply_embedding_weights`).
fn weighted_sum(tensors: &[Tensor], weights: &[f32]) -> Result<Tensor, DreamError> {
    let mut sum: Option<Tensor> = None;
    for (tensor, &weight) in tensors.iter().zip(weights) {
        let term = (tensor * f64::from(weight))?;
        sum = Some(match sum {
            Some(sum) => (sum + term)?,
            None => term,
        });
    }
    sum.ok_or_else(|| DreamError::InvalidRequest("a blend of no prompts".into()))
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
