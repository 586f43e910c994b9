//! Generation parameters as text, in the formats other tools read from PNG text chunks.

/// AUTOMATIC1111's `parameters` text: the prompt, an optional `Negative prompt:` line, then
/// one line of `Key: value` pairs in the order they were added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct A1111Parameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub fields: Vec<(String, String)>,
}

impl A1111Parameters {
    pub fn new(prompt: &str, negative_prompt: &str) -> Self {
        A1111Parameters {
            prompt: prompt.to_string(),
            negative_prompt: negative_prompt.to_string(),
            fields: Vec::new(),
        }
    }

    /// Appends a `Key: value` field; A1111's order is the order of these calls.
    pub fn field(mut self, key: &str, value: impl ToString) -> Self {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }

    /// The text of the PNG `parameters` chunk, formatted as A1111's `create_infotext` does.
    pub fn to_text(&self) -> String {
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(&self.negative_prompt);
        }
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}: {}", quote(v)))
            .collect();
        text.push('\n');
        text.push_str(&fields.join(", "));
        text
    }
}

/// A1111 quotes a value as a JSON string when it would otherwise break the field list.
fn quote(value: &str) -> String {
    if value.contains([',', '\n', ':']) {
        serde_json::to_string(value).expect("a string always serialises")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a1111_infotext_layout() {
        // The layout of an A1111 1.x infotext, as shown in its wiki and written by create_infotext.
        let p = A1111Parameters::new("a cat, sitting", "blurry")
            .field("Steps", 20)
            .field("Sampler", "Euler")
            .field("CFG scale", 7.5)
            .field("Seed", 42)
            .field("Size", "512x512")
            .field("Model", "v1-5");
        assert_eq!(
            p.to_text(),
            "a cat, sitting\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: v1-5"
        );
    }

    #[test]
    fn empty_negative_prompt_has_no_line_and_awkward_values_are_quoted() {
        let p = A1111Parameters::new("x", "").field("Model", "my, model: v2");
        assert_eq!(p.to_text(), "x\nModel: \"my, model: v2\"");
    }
}
