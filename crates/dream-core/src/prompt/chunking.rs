//! Long prompts: a prompt's weighted fragments become token ids with one weight each, split into
//! chunks of 75 that the text encoder sees one at a time, each framed by start- and end-of-text
//! and padded with the tokenizer's padding (A1111's
//! `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line`, or compel's chunking for InvokeAI).
//!
//! A1111: a chunk that fills up moves its tail back to the next chunk when the last comma is at
//! most [`COMMA_BACKTRACK`] tokens from its end, so that a phrase is not cut in two; `BREAK` ends a
//! chunk at once, even an empty one; a textual-inversion embedding's vectors never straddle two
//! chunks.

use super::token_table::{Piece, TokenTable};
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

/// compel's chunks of a prompt, and where each fragment's tokens are in them.
#[derive(Debug, Clone, PartialEq)]
pub struct CompelChunks {
    pub chunks: Vec<Chunk>,
    /// Per fragment, the first and last position of its tokens in the chunks laid end to end
    /// (chunk `c` starting at `c · 77`), or `None` for a fragment without tokens.
    pub fragment_positions: Vec<Option<(usize, usize)>>,
}

/// Splits tokenized prompts into chunks.
pub struct Chunker<'a> {
    tokenizer: &'a ClipTokenizer,
    /// The id of `,</w>`, if the vocabulary has it as one token.
    comma: Option<u32>,
    /// The ids of `.</w>`, `,</w>`, `;</w>` and `:</w>`, where compel prefers to cut.
    punctuation: [Option<u32>; 4],
    /// How many tokens a chunk boundary may move back to reach the last comma; 0 turns the
    /// move off.
    pub comma_backtrack: usize,
    /// Textual-inversion names to replace by their vectors' ids.
    table: Option<&'a TokenTable>,
}

impl<'a> Chunker<'a> {
    pub fn new(tokenizer: &'a ClipTokenizer) -> Self {
        let single = |text: &str| match tokenizer.encode(text)[..] {
            [id] => Some(id),
            _ => None,
        };
        let comma = single(",");
        Chunker {
            tokenizer,
            comma,
            punctuation: [".", ",", ";", ":"].map(single),
            table: None,
            comma_backtrack: COMMA_BACKTRACK,
        }
    }

    /// A chunker that puts the vectors of `table`'s embeddings where their names are.
    pub fn with_token_table(mut self, table: &'a TokenTable) -> Self {
        self.table = (!table.is_empty()).then_some(table);
        self
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
            let tokens = self.tokenizer.encode(text);
            let mut position = 0;
            while let Some(&token) = tokens.get(position) {
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
                let embedding = self
                    .table
                    .and_then(|table| table.match_tokens(&tokens[position..]));
                let Some(embedding) = embedding else {
                    ids.push(token);
                    weights.push(weight);
                    position += 1;
                    continue;
                };
                // An embedding's vectors stay together in one chunk.
                if ids.len() + embedding.vectors() > CHUNK_TOKENS {
                    chunks.push(self.frame(&mut ids, &mut weights));
                    last_comma = None;
                }
                ids.extend(embedding.ids.clone());
                weights.extend(std::iter::repeat_n(weight, embedding.vectors()));
                position += embedding.name_len();
            }
        }
        if !ids.is_empty() || chunks.is_empty() {
            chunks.push(self.frame(&mut ids, &mut weights));
        }
        chunks
    }

    /// A chunk's prompt tokens (between start-of-text and the first end-of-text) with their
    /// weights.
    pub fn prompt_tokens<'c>(&self, chunk: &'c Chunk) -> impl Iterator<Item = (u32, f64)> + 'c {
        let eos = self.tokenizer.eos();
        chunk
            .ids
            .iter()
            .zip(&chunk.weights)
            .skip(1)
            .take_while(move |(&id, _)| id != eos)
            .map(|(&id, &weight)| (id, weight))
    }

    /// A token as text: a word's last token ends in a space, an embedding's first vector is
    /// `<name> ` and its other vectors nothing.
    pub fn token_text(&self, id: u32) -> String {
        let embedding = self
            .table
            .and_then(|table| table.entries().iter().find(|e| e.ids.contains(&id)));
        match embedding {
            Some(entry) if entry.ids.start == id => format!("<{}> ", entry.name),
            Some(_) => String::new(),
            None => self
                .tokenizer
                .decode_token(id)
                .unwrap_or_else(|| format!("<{id}> ")),
        }
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

    /// compel's chunks of a prompt's fragments with `truncate_long_prompts=False` (as InvokeAI
    /// runs it): the fragments' tokens one after the other, cut where a chunk would pass 75
    /// tokens after the last `.` within it, else the last `.`, `,`, `;` or `:`, else the last
    /// word end, else at 75 (`SplitLongTextMode.SENTENCES`).
    pub fn compel_chunks(&self, fragments: &[Fragment]) -> CompelChunks {
        let mut ids = Vec::new();
        let mut weights = Vec::new();
        let mut spans = Vec::new();
        for fragment in fragments {
            // compel has no BREAK: it is a fragment without tokens.
            let Fragment::Text { text, weight } = fragment else {
                spans.push(ids.len()..ids.len());
                continue;
            };
            let tokens = self.compel_tokens(text);
            spans.push(ids.len()..ids.len() + tokens.len());
            weights.extend(std::iter::repeat_n(*weight, tokens.len()));
            ids.extend(tokens);
        }
        // Where each token lands in the chunks, counting the start-of-text of each.
        let mut positions = Vec::with_capacity(ids.len());
        let mut chunks = Vec::new();
        let mut start = 0;
        loop {
            let end = start + self.compel_split(&ids[start..]);
            let first = chunks.len() * (CHUNK_TOKENS + 2) + 1;
            positions.extend(first..first + end - start);
            chunks.push(self.frame(
                &mut ids[start..end].to_vec(),
                &mut weights[start..end].to_vec(),
            ));
            start = end;
            if start == ids.len() {
                break;
            }
        }
        let fragment_positions = spans
            .into_iter()
            .map(|span| {
                (!span.is_empty()).then(|| (positions[span.start], positions[span.end - 1]))
            })
            .collect();
        CompelChunks {
            chunks,
            fragment_positions,
        }
    }

    /// The tokens of a fragment for compel, each `<name>` of the token table as its vectors' ids.
    fn compel_tokens(&self, text: &str) -> Vec<u32> {
        let Some(table) = self.table else {
            return self.tokenizer.encode(text);
        };
        let mut ids = Vec::new();
        for piece in table.split_text(text) {
            match piece {
                Piece::Text(text) => ids.extend(self.tokenizer.encode(text)),
                Piece::Embedding(embedding) => ids.extend(embedding.ids.clone()),
            }
        }
        ids
    }

    /// How many of `ids` compel puts in the next chunk (`_find_next_best_split_point`).
    fn compel_split(&self, ids: &[u32]) -> usize {
        if ids.len() <= CHUNK_TOKENS {
            return ids.len();
        }
        let head = &ids[..CHUNK_TOKENS];
        let last = |found: &dyn Fn(u32) -> bool| head.iter().rposition(|&id| found(id));
        let sentence_end = self.punctuation[0];
        last(&|id| Some(id) == sentence_end)
            .or_else(|| last(&|id| self.punctuation.contains(&Some(id))))
            .or_else(|| {
                last(&|id| {
                    self.tokenizer
                        .decode_token(id)
                        .is_some_and(|token| token.ends_with(' '))
                })
            })
            .map_or(CHUNK_TOKENS, |index| index + 1)
    }

    /// The chunk of the tokens gathered so far, which it takes, leaving them empty: start of
    /// text, the tokens, end of text, then the tokenizer's padding (end of text for SD 1.x, `!`
    /// for SD 2.x's OpenCLIP vocabulary, as A1111 and compel pad).
    fn frame(&self, ids: &mut Vec<u32>, weights: &mut Vec<f64>) -> Chunk {
        let padding = CHUNK_TOKENS.saturating_sub(ids.len());
        let mut chunk_ids = Vec::with_capacity(CHUNK_TOKENS + 2);
        chunk_ids.push(self.tokenizer.bos());
        chunk_ids.append(ids);
        chunk_ids.push(self.tokenizer.eos());
        chunk_ids.extend(std::iter::repeat_n(self.tokenizer.pad_id(), padding));
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
