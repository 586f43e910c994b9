//! ComfyUI's `prompt` chunk: the graph in API format, `{"id": {"class_type": …, "inputs":
//! {name: literal | [source id, output index]}}}`. The parameters are the inputs of the
//! sampler node (`KSampler`, or `KSamplerAdvanced`), followed through its links to the text
//! encoders, the latent image and the checkpoint loader.

use serde_json::{Map, Value};

use super::{GenerationInfo, MetadataFormat};

/// How far a link chain is followed (through LoRA loaders, conditioning combiners, …).
const MAX_DEPTH: usize = 16;

/// The parameters of the first sampler node (lowest numeric id) of an API-format graph.
/// `None` when the text is no such graph or has no sampler.
pub fn read_prompt(text: &str) -> Option<GenerationInfo> {
    let graph: Map<String, Value> = serde_json::from_str(text).ok()?;
    let (_, sampler) = graph
        .iter()
        .filter(|(_, node)| {
            matches!(
                node.get("class_type").and_then(Value::as_str),
                Some("KSampler" | "KSamplerAdvanced")
            )
        })
        .min_by_key(|(id, _)| (id.parse::<u64>().unwrap_or(u64::MAX), id.as_str()))?;
    let inputs = sampler.get("inputs")?;
    let number = |key: &str| inputs.get(key).and_then(Value::as_f64);
    let uint = |key: &str| inputs.get(key).and_then(Value::as_u64);
    let text = |key: &str| inputs.get(key).and_then(Value::as_str).map(str::to_string);

    let mut info = GenerationInfo::new(MetadataFormat::ComfyUiPrompt);
    let graph = Graph(&graph);
    info.prompt = graph
        .find_input(inputs.get("positive"), "text", 0)
        .unwrap_or_default();
    info.negative_prompt = graph
        .find_input(inputs.get("negative"), "text", 0)
        .unwrap_or_default();
    info.seed = uint("seed").or_else(|| uint("noise_seed"));
    info.steps = uint("steps").map(|v| v as usize);
    info.cfg_scale = number("cfg");
    info.sampler = text("sampler_name");
    info.schedule = text("scheduler");
    // A full denoise is txt2img; less is img2img strength.
    info.strength = number("denoise").filter(|denoise| *denoise < 1.0);
    let latent = inputs.get("latent_image");
    info.width = graph
        .find_input(latent, "width", 0)
        .and_then(|v| v.parse().ok());
    info.height = graph
        .find_input(latent, "height", 0)
        .and_then(|v| v.parse().ok());
    info.model = graph.find_input(inputs.get("model"), "ckpt_name", 0);
    Some(info)
}

struct Graph<'a>(&'a Map<String, Value>);

impl Graph<'_> {
    /// The literal input `name` of the node `link` points to, or of the nodes that one links
    /// to, depth first in input order.
    fn find_input(&self, link: Option<&Value>, name: &str, depth: usize) -> Option<String> {
        let source = link?.as_array()?.first()?;
        let id = match source {
            Value::String(id) => id.clone(),
            Value::Number(id) => id.to_string(),
            _ => return None,
        };
        let inputs = self.0.get(&id)?.get("inputs")?.as_object()?;
        match inputs.get(name) {
            Some(Value::String(text)) => return Some(text.clone()),
            Some(Value::Number(number)) => return Some(number.to_string()),
            _ => {}
        }
        if depth >= MAX_DEPTH {
            return None;
        }
        inputs
            .values()
            .filter(|value| value.is_array())
            .find_map(|value| self.find_input(Some(value), name, depth + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/metadata/comfyui_api_prompt.json"
        ))
        .unwrap()
    }

    #[test]
    fn reads_the_ksampler_of_an_api_graph() {
        // ComfyUI's default graph in API format (its script_examples/basic_api_example.py),
        // with a LoRA loader between checkpoint and sampler.
        let info = read_prompt(&fixture()).unwrap();
        let mut expected = GenerationInfo::new(MetadataFormat::ComfyUiPrompt);
        expected.prompt = "masterpiece best quality girl".into();
        expected.negative_prompt = "bad hands".into();
        expected.seed = Some(156680208700286);
        expected.steps = Some(20);
        expected.cfg_scale = Some(8.0);
        expected.sampler = Some("euler".into());
        expected.schedule = Some("normal".into());
        expected.width = Some(512);
        expected.height = Some(768);
        expected.model = Some("v1-5-pruned-emaonly.safetensors".into());
        assert_eq!(info, expected);
    }

    #[test]
    fn partial_denoise_is_a_strength() {
        let graph = r#"{"1": {"class_type": "KSampler", "inputs": {"denoise": 0.6, "seed": 5}}}"#;
        let info = read_prompt(graph).unwrap();
        assert_eq!((info.strength, info.seed), (Some(0.6), Some(5)));
        assert_eq!(read_prompt(r#"{"1": {"class_type": "SaveImage"}}"#), None);
    }

    #[test]
    fn link_cycles_end() {
        let graph = r#"{"1": {"class_type": "KSampler", "inputs": {"positive": ["2", 0]}},
                        "2": {"class_type": "X", "inputs": {"a": ["2", 0]}}}"#;
        assert_eq!(read_prompt(graph).unwrap().prompt, "");
    }

    proptest::proptest! {
        #[test]
        fn reading_any_text_never_panics(text in "\\PC*") {
            let _ = read_prompt(&text);
        }
    }
}
