//! CLIP's byte-level BPE tokenizer, giving the ids that transformers' `CLIPTokenizer` (the
//! `tokenizers`-backed class diffusers uses) gives for a Stable Diffusion prompt.
//!
//! The steps are those of that tokenizer's `tokenizer.json`:
//! 1. normalise: NFC, every whitespace run to one space, lowercase;
//! 2. the literal special tokens `<|startoftext|>` and `<|endoftext|>` in the normalised text
//!    become their ids (transformers declares them `normalized`, so `<|ENDOFTEXT|>` counts too);
//! 3. split the rest into words with CLIP's regex; whitespace between words is dropped;
//! 4. map each word's UTF-8 bytes to GPT-2's printable byte alphabet, mark the last one with the
//!    `</w>` end-of-word suffix, and apply BPE merges lowest rank first.
//!
//! Unlike OpenAI's original tokenizer there is no `ftfy.fix_text` or HTML unescaping: SD pipelines
//! use transformers, so `&amp;` stays five characters.
//!
//! Step 4 comes either from a diffusers `tokenizer/` folder's `vocab.json` + `merges.txt`, or from
//! the OpenAI vocabulary bundled in `instant-clip-tokenizer` (the one every SD 1.x model ships).

use std::collections::HashMap;

use regex::Regex;
use unicode_normalization_alignments::UnicodeNormalization;

pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";

/// The word split of transformers' `CLIPTokenizer` pre-tokenizer. Its special-token alternatives
/// never fire here, because the special tokens are taken out of the text before the split.
const WORD_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("vocab.json is not a JSON object mapping tokens to ids: {0}")]
    Vocab(#[from] serde_json::Error),
    #[error("vocab.json lacks the token {0:?}")]
    MissingToken(String),
    #[error("merges.txt line {line}: {problem}")]
    Merge { line: usize, problem: String },
}

/// The ids a CLIP text encoder takes for one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipTokens {
    /// Start-of-text, the prompt's tokens that fit, end-of-text, then padding up to `max_len`.
    pub ids: Vec<u32>,
    /// The prompt's tokens that did not fit, so that a caller can say which text was dropped.
    pub truncated: Vec<u32>,
}

pub struct ClipTokenizer {
    bpe: WordBpe,
    bos: u32,
    eos: u32,
    /// What fills a prompt's positions after end-of-text.
    pad: u32,
    vocab_size: usize,
    whitespace: Regex,
    special: Regex,
    words: Regex,
}

/// The per-word BPE, from merges files or from OpenAI's bundled vocabulary.
enum WordBpe {
    Merges(Box<MergeBpe>),
    Bundled(instant_clip_tokenizer::Tokenizer),
}

struct MergeBpe {
    /// The id of each byte's single-character token, and of the same with `</w>`.
    byte_ids: [u32; 256],
    byte_end_ids: [u32; 256],
    /// (left, right) → (rank, id of the merged token).
    merges: HashMap<(u32, u32), (usize, u32)>,
    /// Each id's token as raw bytes, `</w>` left in, for decoding.
    token_bytes: HashMap<u32, Vec<u8>>,
}

impl ClipTokenizer {
    /// The tokenizer of a diffusers `tokenizer/` folder, from the contents of its `vocab.json`
    /// and `merges.txt`.
    pub fn from_vocab_and_merges(
        vocab_json: &str,
        merges_txt: &str,
    ) -> Result<Self, TokenizerError> {
        let vocab: HashMap<String, u32> = serde_json::from_str(vocab_json)?;
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| TokenizerError::MissingToken(token.to_string()))
        };

        let byte_chars = bytes_to_unicode();
        let mut byte_ids = [0; 256];
        let mut byte_end_ids = [0; 256];
        for (byte, ch) in byte_chars.iter().enumerate() {
            byte_ids[byte] = id(&ch.to_string())?;
            byte_end_ids[byte] = id(&format!("{ch}{END_OF_WORD}"))?;
        }

        let mut merges = HashMap::new();
        let lines = merges_txt
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with("#version"));
        for (rank, (index, line)) in lines.enumerate() {
            let merge_error = |problem: String| TokenizerError::Merge {
                line: index + 1,
                problem,
            };
            let (left, right) = match line.split(' ').collect::<Vec<_>>()[..] {
                [left, right] => (left, right),
                _ => {
                    return Err(merge_error(format!(
                        "{line:?} is not two tokens separated by a space"
                    )))
                }
            };
            let lookup = |token: &str| {
                id(token).map_err(|_| merge_error(format!("{token:?} is not in vocab.json")))
            };
            let pair = (lookup(left)?, lookup(right)?);
            let merged = lookup(&format!("{left}{right}"))?;
            // A repeated rule keeps its first, highest-priority rank.
            merges.entry(pair).or_insert((rank, merged));
        }

        let vocab_size = vocab.values().max().map_or(0, |&max| max as usize + 1);
        let char_bytes: HashMap<char, u8> = byte_chars
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        // Characters outside the byte alphabet only occur in hand-made vocabularies; they
        // decode as themselves.
        let token_bytes = vocab
            .iter()
            .map(|(token, &token_id)| {
                let bytes = token.chars().flat_map(|c| match char_bytes.get(&c) {
                    Some(&b) => vec![b],
                    None => c.to_string().into_bytes(),
                });
                (token_id, bytes.collect())
            })
            .collect();

        let bpe = MergeBpe {
            byte_ids,
            byte_end_ids,
            merges,
            token_bytes,
        };
        Ok(Self::with_bpe(
            WordBpe::Merges(Box::new(bpe)),
            id(START_OF_TEXT)?,
            id(END_OF_TEXT)?,
            vocab_size,
        ))
    }

    /// The tokenizer of OpenAI's CLIP ViT-L/14, the one every SD 1.x checkpoint uses, from the
    /// vocabulary compiled into this library. Building it parses ~49k merges: build it once.
    pub fn bundled() -> Self {
        let openai = instant_clip_tokenizer::Tokenizer::new();
        let bos = u32::from(openai.start_of_text().to_u16());
        let eos = u32::from(openai.end_of_text().to_u16());
        Self::with_bpe(WordBpe::Bundled(openai), bos, eos, eos as usize + 1)
    }

    fn with_bpe(bpe: WordBpe, bos: u32, eos: u32, vocab_size: usize) -> Self {
        let regex = |pattern: &str| {
            Regex::new(pattern).expect("the tokenizer's patterns are valid regexes")
        };
        let special = format!(
            "{}|{}",
            regex::escape(START_OF_TEXT),
            regex::escape(END_OF_TEXT)
        );
        ClipTokenizer {
            bpe,
            bos,
            eos,
            pad: eos,
            vocab_size,
            whitespace: regex(r"\s+"),
            special: regex(&special),
            words: regex(WORD_PATTERN),
        }
    }

    /// The prompt's token ids, without start- or end-of-text.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = self.normalize(text);
        let mut ids = Vec::new();
        let mut rest_start = 0;
        for special in self.special.find_iter(&text) {
            self.encode_words(&text[rest_start..special.start()], &mut ids);
            ids.push(if special.as_str() == START_OF_TEXT {
                self.bos
            } else {
                self.eos
            });
            rest_start = special.end();
        }
        self.encode_words(&text[rest_start..], &mut ids);
        ids
    }

    /// The `max_len` ids a CLIP text encoder takes (77 for SD): start-of-text, as many of the
    /// prompt's tokens as fit in `max_len - 2`, end-of-text, then padding. A `max_len` below 2
    /// counts as 2.
    pub fn encode_for_clip(&self, text: &str, max_len: usize) -> ClipTokens {
        let mut tokens = self.encode(text);
        let room = max_len.saturating_sub(2);
        let truncated = tokens.split_off(room.min(tokens.len()));
        let mut ids = Vec::with_capacity(max_len.max(2));
        ids.push(self.bos);
        ids.extend(tokens);
        ids.push(self.eos);
        ids.resize(max_len.max(2), self.pad_id());
        ClipTokens { ids, truncated }
    }

    pub fn bos(&self) -> u32 {
        self.bos
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The padding id: end-of-text unless [`Self::with_pad_token`] said otherwise.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The tokenizer padding with `token`, a vocabulary entry as a tokenizer folder's
    /// `special_tokens_map.json` names it: SD 1.x pads with `<|endoftext|>`, SD 2.x's OpenCLIP
    /// vocabulary with `!` (id 0).
    pub fn with_pad_token(mut self, token: &str) -> Result<Self, TokenizerError> {
        self.pad = self
            .token_id(token)
            .ok_or_else(|| TokenizerError::MissingToken(token.to_string()))?;
        Ok(self)
    }

    /// The id of a vocabulary entry written as in `vocab.json`.
    fn token_id(&self, token: &str) -> Option<u32> {
        match token {
            START_OF_TEXT => return Some(self.bos),
            END_OF_TEXT => return Some(self.eos),
            _ => {}
        }
        let (stem, end) = match token.strip_suffix(END_OF_WORD) {
            Some(stem) => (stem, END_OF_WORD),
            None => (token, ""),
        };
        let chars = bytes_to_unicode();
        let mut bytes = stem
            .chars()
            .map(|c| chars.iter().position(|&b| b == c).map(|b| b as u8))
            .collect::<Option<Vec<u8>>>()?;
        bytes.extend_from_slice(end.as_bytes());
        match &self.bpe {
            WordBpe::Merges(bpe) => bpe
                .token_bytes
                .iter()
                .find(|(_, token_bytes)| **token_bytes == bytes)
                .map(|(&id, _)| id),
            // The compiled-in vocabulary only maps ids to text: the id whose text this is.
            WordBpe::Bundled(_) => {
                let text = String::from_utf8_lossy(&bytes).replace(END_OF_WORD, " ");
                (0..self.bos).find(|&id| self.decode(&[id]) == text)
            }
        }
    }

    /// One more than the largest id: the rows a token embedding needs.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// One token as text, for showing how a prompt was split. A word's last token ends in a
    /// space; a token holding part of a multi-byte character shows as U+FFFD. `None` for an id
    /// the vocabulary does not have.
    pub fn decode_token(&self, id: u32) -> Option<String> {
        let known = match &self.bpe {
            WordBpe::Merges(bpe) => bpe.token_bytes.contains_key(&id),
            WordBpe::Bundled(_) => (id as usize) < self.vocab_size,
        };
        known.then(|| self.decode(&[id]))
    }

    /// The text of a token sequence, each word followed by a space, as transformers decodes it
    /// before its final strip. Ids the vocabulary does not have are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.bpe {
            WordBpe::Merges(bpe) => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .filter_map(|id| bpe.token_bytes.get(id))
                    .flatten()
                    .copied()
                    .collect();
                String::from_utf8_lossy(&bytes).replace(END_OF_WORD, " ")
            }
            // instant-clip-tokenizer spells the special tokens its own way, so they are
            // decoded here and only the runs between them there.
            WordBpe::Bundled(openai) => {
                let mut text = String::new();
                let mut run = Vec::new();
                for &id in ids {
                    if id == self.bos || id == self.eos {
                        text.push_str(&openai.decode(run.drain(..)));
                        text.push_str(if id == self.bos {
                            START_OF_TEXT
                        } else {
                            END_OF_TEXT
                        });
                    } else if let Some(token) = u16::try_from(id)
                        .ok()
                        .and_then(|id| instant_clip_tokenizer::Token::from_u16(id, openai))
                    {
                        run.push(token);
                    }
                }
                text.push_str(&openai.decode(run));
                text
            }
        }
    }

    /// transformers' normaliser: NFC, whitespace runs to one space, then lowercase character by
    /// character (so a final Σ becomes σ, not ς, as in `tokenizers`). The NFC tables are those
    /// of `tokenizers` (Unicode 9): newer ones order some combining marks differently.
    fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().map(|(c, _)| c).collect();
        let spaced = self.whitespace.replace_all(&nfc, " ");
        spaced.chars().flat_map(char::to_lowercase).collect()
    }

    fn encode_words(&self, text: &str, ids: &mut Vec<u32>) {
        for word in self.words.find_iter(text) {
            match &self.bpe {
                WordBpe::Merges(bpe) => bpe.encode_word(word.as_str(), ids),
                // The word is already one lowercase match of CLIP's regex, so the crate's own
                // lowercasing and split leave it whole.
                WordBpe::Bundled(openai) => {
                    let mut tokens = Vec::new();
                    openai.encode(word.as_str(), &mut tokens);
                    ids.extend(tokens.into_iter().map(|t| u32::from(t.to_u16())));
                }
            }
        }
    }
}

impl MergeBpe {
    /// OpenAI's BPE: repeatedly merge every occurrence of the adjacent pair with the lowest rank.
    fn encode_word(&self, word: &str, ids: &mut Vec<u32>) {
        let Some((&last, init)) = word.as_bytes().split_last() else {
            return;
        };
        let mut symbols: Vec<u32> = init.iter().map(|&b| self.byte_ids[b as usize]).collect();
        symbols.push(self.byte_end_ids[last as usize]);
        while let Some(((left, right), merged)) = symbols
            .windows(2)
            .filter_map(|pair| {
                self.merges
                    .get(&(pair[0], pair[1]))
                    .map(|&(rank, merged)| (rank, (pair[0], pair[1]), merged))
            })
            .min_by_key(|&(rank, ..)| rank)
            .map(|(_, pair, merged)| (pair, merged))
        {
            let mut next = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == left && symbols[i + 1] == right {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(symbols[i]);
                    i += 1;
                }
            }
            symbols = next;
        }
        ids.extend(symbols);
    }
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes stand for
/// themselves, the rest are shifted to U+0100 onwards in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut chars = ['\0'; 256];
    let mut shifted = 256;
    for b in 0..=255u8 {
        chars[b as usize] = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(shifted - 1).expect("U+0100..U+0143 are characters")
        };
    }
    chars
}
