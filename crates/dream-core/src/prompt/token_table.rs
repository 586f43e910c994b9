//! The names of textual-inversion embeddings and the token ids their vectors take.
//!
//! An embedding is one or more vectors in the text encoder's input space that a name in the
//! prompt stands for. Each vector gets an id past the tokenizer's vocabulary, so that the chunker
//! can place it like any token; the encoder looks those ids up among the embeddings' vectors
//! instead of its own table. A name is found the way each UI finds it:
//! - A1111: the name's tokens (the embedding file's stem, tokenized) anywhere in the prompt's
//!   tokens, longest name first (`EmbeddingDatabase.find_embedding_at_position`);
//! - InvokeAI: `<name>` anywhere in the text, as the token InvokeAI adds to the tokenizer.

use std::ops::Range;

use crate::tokenizer::ClipTokenizer;

/// Most vectors one embedding may have: all of them must fit in one 75-token chunk.
pub const MAX_VECTORS: usize = super::chunking::CHUNK_TOKENS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    pub name: String,
    /// The name's tokens, which A1111 matches.
    name_ids: Vec<u32>,
    /// The ids of the embedding's vectors.
    pub ids: Range<u32>,
}

impl TableEntry {
    pub fn vectors(&self) -> usize {
        self.ids.len()
    }

    /// How many tokens the name takes in the prompt.
    pub fn name_len(&self) -> usize {
        self.name_ids.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenTableError {
    #[error("an embedding named {0:?} is already loaded")]
    Duplicate(String),
    #[error("the embedding {name:?} has {vectors} vectors; it needs 1 to {MAX_VECTORS}")]
    VectorCount { name: String, vectors: usize },
    #[error("the embedding name {0:?} has no tokens")]
    EmptyName(String),
}

/// Embedding names and their vectors' ids, which start right after the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTable {
    first_id: u32,
    entries: Vec<TableEntry>,
}

/// A piece of prompt text: plain text, or an embedding's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'t, 'e> {
    Text(&'t str),
    Embedding(&'e TableEntry),
}

impl TokenTable {
    /// An empty table for a tokenizer's vocabulary.
    pub fn new(tokenizer: &ClipTokenizer) -> Self {
        TokenTable {
            first_id: tokenizer.vocab_size() as u32,
            entries: Vec::new(),
        }
    }

    /// The first id past the vocabulary: ids from here on are embedding vectors, the `i`-th
    /// vector of all embeddings (in the order they were added) having id `first_id + i`.
    pub fn first_id(&self) -> u32 {
        self.first_id
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[TableEntry] {
        &self.entries
    }

    /// Adds an embedding of `vectors` vectors under `name`, returning the ids they take.
    pub fn insert(
        &mut self,
        tokenizer: &ClipTokenizer,
        name: &str,
        vectors: usize,
    ) -> Result<Range<u32>, TokenTableError> {
        if self.entries.iter().any(|entry| entry.name == name) {
            return Err(TokenTableError::Duplicate(name.to_string()));
        }
        if !(1..=MAX_VECTORS).contains(&vectors) {
            return Err(TokenTableError::VectorCount {
                name: name.to_string(),
                vectors,
            });
        }
        let name_ids = tokenizer.encode(name);
        if name_ids.is_empty() {
            return Err(TokenTableError::EmptyName(name.to_string()));
        }
        let start = self.entries.last().map_or(self.first_id, |e| e.ids.end);
        let ids = start..start + vectors as u32;
        self.entries.push(TableEntry {
            name: name.to_string(),
            name_ids,
            ids: ids.clone(),
        });
        // Longest name first, as A1111 tries them.
        self.entries
            .sort_by_key(|entry| std::cmp::Reverse(entry.name_ids.len()));
        Ok(ids)
    }

    /// A1111's match: the embedding whose name's tokens begin `tokens`.
    pub fn match_tokens(&self, tokens: &[u32]) -> Option<&TableEntry> {
        self.entries
            .iter()
            .find(|entry| tokens.starts_with(&entry.name_ids))
    }

    /// InvokeAI's match: the text cut at every `<name>` of a known embedding.
    pub fn split_text<'t>(&self, text: &'t str) -> Vec<Piece<'t, '_>> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some((at, entry)) = self
            .entries
            .iter()
            .filter_map(|entry| {
                rest.find(&format!("<{}>", entry.name))
                    .map(|at| (at, entry))
            })
            .min_by_key(|&(at, entry)| (at, std::cmp::Reverse(entry.name.len())))
        {
            if at > 0 {
                pieces.push(Piece::Text(&rest[..at]));
            }
            pieces.push(Piece::Embedding(entry));
            rest = &rest[at + entry.name.len() + 2..];
        }
        if !rest.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Text(rest));
        }
        pieces
    }
}
