//! A1111's "Prompt matrix" script: in `a busy street|illustration|cinematic lighting` the text
//! before the first `|` is always there and each later part is optional, so the prompt makes
//! one prompt per combination of the optional parts (4 here). Combination `i` has optional part
//! `j` when bit `j` of `i` is set; the images go into a grid whose columns step through the
//! first half of the optional parts (rounded up) and whose rows step through the rest, with
//! those parts as the labels.

use super::{is_py_space, PromptError};

/// The most optional parts a matrix may have: 2^16 images is already far past any grid.
pub const MAX_OPTIONAL_PARTS: usize = 16;

/// How the chosen parts are joined (A1111's "Joining char").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatrixDelimiter {
    #[default]
    Comma,
    Space,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatrixOptions {
    pub delimiter: MatrixDelimiter,
    /// A1111's "Set at prompt start": the chosen optional parts come before the fixed text.
    pub optional_first: bool,
}

/// Every prompt of a prompt matrix and how they lay out in a grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMatrix {
    /// One prompt per combination, in combination order (the grid's row-major order).
    pub prompts: Vec<String>,
    /// The optional parts as written after each `|`, for the labels.
    pub parts: Vec<String>,
}

impl PromptMatrix {
    /// Reads `a|b|c` as A1111 does. A prompt without `|` gives itself alone.
    pub fn new(prompt: &str, options: &MatrixOptions) -> Result<Self, PromptError> {
        let mut split = prompt.split('|');
        let fixed = split.next().unwrap_or_default();
        let parts: Vec<String> = split.map(str::to_string).collect();
        if parts.len() > MAX_OPTIONAL_PARTS {
            return Err(PromptError::TooManyMatrixParts { parts: parts.len() });
        }
        let delimiter = match options.delimiter {
            MatrixDelimiter::Comma => ", ",
            MatrixDelimiter::Space => " ",
        };
        let prompts = (0..1usize << parts.len())
            .map(|combination| {
                let chosen = parts
                    .iter()
                    .enumerate()
                    .filter(|(n, _)| combination & (1 << n) != 0)
                    .map(|(_, part)| part.trim_matches(is_py_space).trim_matches(','));
                let joined: Vec<&str> = if options.optional_first {
                    chosen.chain([fixed]).collect()
                } else {
                    [fixed].into_iter().chain(chosen).collect()
                };
                joined.join(delimiter)
            })
            .collect();
        Ok(PromptMatrix { prompts, parts })
    }

    /// The number of optional parts along the columns: half of them, rounded up.
    fn column_parts(&self) -> usize {
        self.parts.len().div_ceil(2)
    }

    /// Grid rows, A1111's `1 << (parts // 2)`.
    pub fn rows(&self) -> usize {
        1 << (self.parts.len() / 2)
    }

    pub fn columns(&self) -> usize {
        1 << self.column_parts()
    }

    /// The labels over column `column`: each column part, and whether that column has it.
    pub fn column_labels(&self, column: usize) -> Vec<(&str, bool)> {
        self.parts[..self.column_parts()]
            .iter()
            .enumerate()
            .map(|(i, part)| (part.as_str(), column & (1 << i) != 0))
            .collect()
    }

    /// The labels beside row `row`: each row part, and whether that row has it.
    pub fn row_labels(&self, row: usize) -> Vec<(&str, bool)> {
        self.parts[self.column_parts()..]
            .iter()
            .enumerate()
            .map(|(i, part)| (part.as_str(), row & (1 << i) != 0))
            .collect()
    }

    /// The grid's labels as text, for a picture's metadata: each column's and each row's
    /// optional parts, `-` where it has none.
    pub fn describe(&self) -> String {
        let label = |labels: Vec<(&str, bool)>| {
            let active: Vec<&str> = labels
                .into_iter()
                .filter_map(|(part, active)| active.then_some(part.trim()))
                .collect();
            if active.is_empty() {
                "-".to_string()
            } else {
                active.join(" + ")
            }
        };
        let columns: Vec<String> = (0..self.columns())
            .map(|c| label(self.column_labels(c)))
            .collect();
        let rows: Vec<String> = (0..self.rows())
            .map(|r| label(self.row_labels(r)))
            .collect();
        format!(
            "columns: {}\nrows: {}",
            columns.join(" | "),
            rows.join(" | ")
        )
    }
}
