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

impl A1111Parameters {
    /// Reads an A1111 `parameters` text back, as A1111's `parse_generation_parameters` does:
    /// the last line holds the fields when at least three `Key: value` pairs are found there;
    /// lines from `Negative prompt:` on are the negative prompt; quoted values are unquoted.
    pub fn parse(text: &str) -> Self {
        let mut lines: Vec<&str> = text.trim().split('\n').collect();
        let last = lines.last().copied().unwrap_or_default();
        let fields: Vec<(String, String)> = field_pattern()
            .captures_iter(last)
            .map(|c| (c[1].to_string(), unquote(&c[2])))
            .collect();
        let fields = if fields.len() >= 3 {
            lines.pop();
            fields
        } else {
            Vec::new()
        };
        let (mut prompt, mut negative) = (Vec::new(), Vec::new());
        for line in lines {
            let line = line.trim();
            match line.strip_prefix("Negative prompt:") {
                Some(rest) => negative.push(rest.trim()),
                None if !negative.is_empty() => negative.push(line),
                None => prompt.push(line),
            }
        }
        A1111Parameters {
            prompt: prompt.join("\n"),
            negative_prompt: negative.join("\n"),
            fields,
        }
    }

    /// The value of field `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One `Key: value` pair of the fields line (A1111's `re_param_code`).
fn field_pattern() -> &'static regex::Regex {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        regex::Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#)
            .expect("the pattern is valid")
    })
}

/// A value written quoted by `quote` is a JSON string; anything else is taken as it is.
fn unquote(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        if let Ok(text) = serde_json::from_str::<String>(value) {
            return text;
        }
    }
    value.to_string()
}

/// A1111 quotes a value as a JSON string when it would otherwise break the field list. A value
/// that already looks quoted is quoted too (A1111 leaves it, and then reads it back altered).
fn quote(value: &str) -> String {
    if value.contains([',', '\n', ':']) || (value.starts_with('"') && value.ends_with('"')) {
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
    fn reads_an_a1111_infotext() {
        // The example of A1111's parse_generation_parameters docstring, multi-line prompt included.
        let text = "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\nNegative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b";
        let p = A1111Parameters::parse(text);
        assert!(
            p.prompt.starts_with("girl with an artist's beret") && p.prompt.ends_with("intricate")
        );
        assert!(
            p.negative_prompt.starts_with("ugly, fat")
                && p.negative_prompt.ends_with("messy drawing")
        );
        assert_eq!(p.get("Sampler"), Some("Euler a"));
        assert_eq!(p.get("Seed"), Some("965400086"));
        assert_eq!(p.get("Size"), Some("512x512"));
        assert_eq!(p.get("Model hash"), Some("45dee52b"));
        assert_eq!(p.fields.len(), 6);
    }

    #[test]
    fn text_without_a_fields_line_is_all_prompt() {
        let p = A1111Parameters::parse("just a prompt\nsecond line");
        assert_eq!(p.prompt, "just a prompt\nsecond line");
        assert!(p.fields.is_empty() && p.negative_prompt.is_empty());
    }

    #[test]
    fn written_parameters_read_back_unchanged() {
        let p = A1111Parameters::new(
            "a \"quoted\" cat, (detailed:1.2)\nline two",
            "blurry, bad\nugly",
        )
        .field("Steps", 20)
        .field("Sampler", "DPM++ 2M")
        .field("Seed", 1)
        .field("Model", "odd, name: \"v2\"");
        assert_eq!(A1111Parameters::parse(&p.to_text()), p);
    }

    #[test]
    fn empty_negative_prompt_has_no_line_and_awkward_values_are_quoted() {
        let p = A1111Parameters::new("x", "").field("Model", "my, model: v2");
        assert_eq!(p.to_text(), "x\nModel: \"my, model: v2\"");
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in "\\PC*") {
            let _ = A1111Parameters::parse(&text);
        }

        #[test]
        fn simple_fields_round_trip(prompt in "[a-z ()\\[\\]:,]{0,40}", value in "[a-zA-Z0-9 ,:\"\\\\]{1,20}") {
            let p = A1111Parameters::new(prompt.trim(), "").field("Steps", 1).field("Seed", 2).field("Model", value.trim());
            proptest::prop_assume!(!value.trim().is_empty() && !prompt.trim().is_empty());
            proptest::prop_assert_eq!(A1111Parameters::parse(&p.to_text()), p);
        }
    }
}
