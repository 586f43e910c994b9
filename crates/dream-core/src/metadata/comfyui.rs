//! ComfyUI's `prompt` chunk: the graph in API format, `{"id": {"class_type": …, "inputs":
//! {name: literal | [source id, output index]}}}`. The parameters are the inputs of the
//! sampler node (`KSampler`, or `KSamplerAdvanced`), followed through its links to the text
//! encoders, the latent image and the checkpoint loader.
//!
//! The `workflow` chunk holds the editor's graph instead: nodes with positional
//! `widgets_values` and a separate list of links. It is read by turning it into the API format
//! for the node types whose widgets are known.

use serde_json::{Map, Value};

use super::{GenerationInfo, MetadataFormat};

/// How far a link chain is followed (through LoRA loaders, conditioning combiners, …).
const MAX_DEPTH: usize = 16;

/// The parameters of the first sampler node (lowest numeric id) of an API-format graph.
/// `None` when the text is no such graph or has no sampler.
pub fn read_prompt(text: &str) -> Option<GenerationInfo> {
    let graph: Map<String, Value> = serde_json::from_str(text).ok()?;
    read_graph(&graph, MetadataFormat::ComfyUiPrompt)
}

/// The widget names of the node types the workflow reader knows, in `widgets_values` order
/// (a seed widget is followed by its "control after generate" choice).
const WIDGETS: [(&str, &[&str]); 5] = [
    (
        "KSampler",
        &[
            "seed",
            "control_after_generate",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "denoise",
        ],
    ),
    (
        "KSamplerAdvanced",
        &[
            "add_noise",
            "noise_seed",
            "control_after_generate",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "start_at_step",
            "end_at_step",
            "return_with_leftover_noise",
        ],
    ),
    ("CLIPTextEncode", &["text"]),
    ("EmptyLatentImage", &["width", "height", "batch_size"]),
    ("CheckpointLoaderSimple", &["ckpt_name"]),
];

/// The parameters in a `workflow` chunk: `{"nodes": [{"id", "type", "inputs": [{"name",
/// "link"}], "widgets_values": […]}], "links": [[id, from node, from slot, to node, to slot,
/// type]]}`. `None` when the text is no such graph or has no sampler.
pub fn read_workflow(text: &str) -> Option<GenerationInfo> {
    let workflow: Value = serde_json::from_str(text).ok()?;
    // Link id -> [source node id, source slot], as API-format inputs name their source.
    let mut sources = std::collections::HashMap::new();
    for link in workflow.get("links")?.as_array()? {
        if let Some([id, from, slot, ..]) = link.as_array().map(Vec::as_slice) {
            sources.insert(
                node_id(id),
                Value::from(vec![Value::from(node_id(from)), slot.clone()]),
            );
        }
    }
    let mut graph = Map::new();
    for node in workflow.get("nodes")?.as_array()? {
        let (Some(id), Some(kind)) = (node.get("id"), node.get("type").and_then(Value::as_str))
        else {
            continue;
        };
        let mut inputs = Map::new();
        let widgets = WIDGETS
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[][..], |(_, w)| *w);
        if let Some(values) = node.get("widgets_values").and_then(Value::as_array) {
            for (name, value) in widgets.iter().zip(values) {
                inputs.insert(name.to_string(), value.clone());
            }
        }
        for input in node
            .get("inputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = input.get("name").and_then(Value::as_str);
            let source = input
                .get("link")
                .and_then(|link| sources.get(&node_id(link)));
            if let (Some(name), Some(source)) = (name, source) {
                inputs.insert(name.to_string(), source.clone());
            }
        }
        let node = serde_json::json!({"class_type": kind, "inputs": inputs});
        graph.insert(node_id(id), node);
    }
    read_graph(&graph, MetadataFormat::ComfyUiWorkflow)
}

fn read_graph(graph: &Map<String, Value>, format: MetadataFormat) -> Option<GenerationInfo> {
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

    let mut info = GenerationInfo::new(format);
    let graph = Graph(graph);
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

/// A node or link id as a map key: numbers and strings alike.
fn node_id(id: &Value) -> String {
    match id {
        Value::String(id) => id.clone(),
        id => id.to_string(),
    }
}

struct Graph<'a>(&'a Map<String, Value>);

impl Graph<'_> {
    /// The literal input `name` of the node `link` points to, or of the nodes that one links
    /// to, depth first in input order.
    fn find_input(&self, link: Option<&Value>, name: &str, depth: usize) -> Option<String> {
        let source = link?.as_array()?.first()?;
        let inputs = self.0.get(&node_id(source))?.get("inputs")?.as_object()?;
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
    fn reads_the_same_graph_from_the_editor_workflow() {
        let workflow = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/metadata/comfyui_workflow.json"
        ))
        .unwrap();
        let info = read_workflow(&workflow).unwrap();
        let expected = GenerationInfo {
            format: MetadataFormat::ComfyUiWorkflow,
            ..read_prompt(&fixture()).unwrap()
        };
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
            let _ = read_workflow(&text);
        }
    }
}
