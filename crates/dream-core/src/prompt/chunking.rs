//! Long prompts: a prompt's weighted fragments become token ids with one weight each, split into
//! chunks of 75 that the text encoder sees one at a time, each framed by start- and end-of-text
//! and padded with end-of-text (A1111's `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line`).
//!
//! A chunk that fills up moves its tail back to the next chunk when the last comma is at most
//! [`COMMA_BACKTRACK`] tokens from its end, so that a phrase is not cut in two; `BREAK` ends a
//! chunk at once, even an empty one.

use super::Fragment;
use crate::tokenizer::ClipTokenizer;

/// Prompt tokens per chunk: CLIP's 77 positions less start- and end-of-text.
pub const CHUNK_TOKENS: usize = 75;

/// A1111's default "comma_padding_backtrack".
pub const COMMA_BACKTRACK: usize = 20;

/// One pass of the text encoder: `CHUNK_TOKENS + 2` ids and their emphasis weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Start-of-text, the chunk's tokens, end-of-text padding, end-of-text.
    pub ids: Vec<u32>,
    /// Each id's weight; the frame and the padding weigh 1.
    pub weights: Vec<f64>,
}

/// Splits tokenized prompts into chunks.
pub struct Chunker<'a> {
    tokenizer: &'a ClipTokenizer,
    /// The id of `,</w>`, if the vocabulary has it as one token.
    comma: Option<u32>,
    /// How many tokens a chunk boundary may move back to reach the last comma; 0 turns the
    /// move off.
    pub comma_backtrack: usize,
}

impl<'a> Chunker<'a> {
    pub fn new(tokenizer: &'a ClipTokenizer) -> Self {
        let comma = match tokenizer.encode(",")[..] {
            [id] => Some(id),
            _ => None,
        };
        Chunker {
            tokenizer,
            comma,
            comma_backtrack: COMMA_BACKTRACK,
        }
    }

    /// The chunks of a prompt's fragments. Each fragment is tokenized on its own, as A1111 does,
    /// so `a(b)` is the tokens of "a" then those of "b". At least one chunk comes back.
    pub fn chunks(&self, fragments: &[Fragment]) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut ids: Vec<u32> = Vec::with_capacity(CHUNK_TOKENS);
        let mut weights: Vec<f64> = Vec::with_capacity(CHUNK_TOKENS);
        // Where the last comma of the current chunk is.
        let mut last_comma: Option<usize> = None;
        for fragment in fragments {
            let (text, weight) = match fragment {
                Fragment::Break => {
                    chunks.push(self.frame(&mut ids, &mut weights));
                    last_comma = None;
                    continue;
                }
                Fragment::Text { text, weight } => (text, *weight),
            };
            for token in self.tokenizer.encode(text) {
                if Some(token) == self.comma {
                    last_comma = Some(ids.len());
                } else if let Some(comma) = last_comma.filter(|&comma| {
                    self.comma_backtrack != 0
                        && ids.len() == CHUNK_TOKENS
                        && ids.len() - comma <= self.comma_backtrack
                }) {
                    let mut moved_ids = ids.split_off(comma + 1);
                    let mut moved_weights = weights.split_off(comma + 1);
                    chunks.push(self.frame(&mut ids, &mut weights));
                    last_comma = None;
                    std::mem::swap(&mut ids, &mut moved_ids);
                    std::mem::swap(&mut weights, &mut moved_weights);
                }
                if ids.len() == CHUNK_TOKENS {
                    chunks.push(self.frame(&mut ids, &mut weights));
                    last_comma = None;
                }
                ids.push(token);
                weights.push(weight);
            }
        }
        if !ids.is_empty() || chunks.is_empty() {
            chunks.push(self.frame(&mut ids, &mut weights));
        }
        chunks
    }

    /// The chunk of an empty prompt: start-of-text, then end-of-text to the end.
    pub fn empty_chunk(&self) -> Chunk {
        self.frame(&mut Vec::new(), &mut Vec::new())
    }

    /// Appends empty chunks until every prompt has as many chunks as the longest, so that their
    /// conditionings have one length (a positive and a negative prompt go through one UNet
    /// batch).
    pub fn pad_to_same_count(&self, prompts: &mut [Vec<Chunk>]) {
        let count = prompts.iter().map(Vec::len).max().unwrap_or(0);
        for chunks in prompts {
            chunks.resize_with(count, || self.empty_chunk());
        }
    }

    /// The chunk of the tokens gathered so far, which it takes, leaving them empty.
    fn frame(&self, ids: &mut Vec<u32>, weights: &mut Vec<f64>) -> Chunk {
        let eos = self.tokenizer.eos();
        let padding = CHUNK_TOKENS.saturating_sub(ids.len());
        let mut chunk_ids = Vec::with_capacity(CHUNK_TOKENS + 2);
        chunk_ids.push(self.tokenizer.bos());
        chunk_ids.append(ids);
        chunk_ids.extend(std::iter::repeat_n(eos, padding + 1));
        let mut chunk_weights = Vec::with_capacity(CHUNK_TOKENS + 2);
        chunk_weights.push(1.0);
        chunk_weights.append(weights);
        chunk_weights.extend(std::iter::repeat_n(1.0, padding + 1));
        Chunk {
            ids: chunk_ids,
            weights: chunk_weights,
        }
    }
}
