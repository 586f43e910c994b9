//! InvokeAI 2.x's model registry, `configs/models.yaml`: named models, each with its weights,
//! an optional VAE and default image size, one of them the default.
//!
//! ```yaml
//! stable-diffusion-1.5:
//!   description: Stable Diffusion version 1.5
//!   weights: models/ldm/stable-diffusion-v1/v1-5-pruned-emaonly.ckpt
//!   config: configs/stable-diffusion/v1-inference.yaml
//!   vae: models/ldm/stable-diffusion-v1/vae-ft-mse-840000-ema-pruned.ckpt
//!   width: 512
//!   height: 512
//!   default: true
//! ```
//!
//! Relative paths are relative to the root folder: the one holding `configs/`, as in InvokeAI
//! (or the registry's own folder when that is not named `configs`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::DreamError;

/// One model of the registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A single-file checkpoint (`.ckpt`, `.safetensors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// A diffusers folder (InvokeAI 2.3's `format: diffusers` entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A Hugging Face repository (InvokeAI 2.3's diffusers entries), which `model_path`
    /// does not fetch (the `dream` CLI does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// InvokeAI's LDM `.yaml` config, or a diffusers folder whose configs describe a
    /// single-file checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<usize>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// The models of one `models.yaml`, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRegistry {
    file: PathBuf,
    models: Vec<(String, ModelEntry)>,
}

impl ModelRegistry {
    /// Reads `file`; a registry that does not exist yet is empty (`save` creates it).
    pub fn open(file: impl AsRef<Path>) -> Result<Self, DreamError> {
        let file = file.as_ref().to_path_buf();
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(DreamError::Io { path: file, source }),
        };
        let models = parse(&text).map_err(|message| DreamError::InvalidModelFile {
            path: file.clone(),
            message,
        })?;
        Ok(ModelRegistry { file, models })
    }

    /// Writes the registry back to its file, creating its folder if needed.
    pub fn save(&self) -> Result<(), DreamError> {
        let io = |source| DreamError::Io {
            path: self.file.clone(),
            source,
        };
        if let Some(folder) = self.file.parent().filter(|f| !f.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(io)?;
        }
        std::fs::write(&self.file, self.to_yaml()).map_err(io)
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelEntry)> {
        self.models
            .iter()
            .map(|(name, entry)| (name.as_str(), entry))
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|(n, _)| n == name).map(|(_, e)| e)
    }

    /// The model marked `default: true`, else the first (as InvokeAI picks).
    pub fn default_model(&self) -> Option<&str> {
        self.models
            .iter()
            .find(|(_, entry)| entry.default)
            .or(self.models.first())
            .map(|(name, _)| name.as_str())
    }

    /// Adds `name`, or replaces it where it stands; `default: true` unmarks the others.
    pub fn insert(&mut self, name: &str, entry: ModelEntry) {
        if entry.default {
            for (_, other) in &mut self.models {
                other.default = false;
            }
        }
        match self.models.iter_mut().find(|(n, _)| n == name) {
            Some((_, old)) => *old = entry,
            None => self.models.push((name.to_string(), entry)),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<ModelEntry> {
        let at = self.models.iter().position(|(n, _)| n == name)?;
        Some(self.models.remove(at).1)
    }

    /// Where a path written in the registry points.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            return path.to_path_buf();
        }
        let folder = self.file.parent().unwrap_or(Path::new(""));
        let root = match folder.file_name() {
            Some(name) if name == "configs" => folder.parent().unwrap_or(Path::new("")),
            _ => folder,
        };
        root.join(path)
    }

    /// The file or folder that `entry`'s model loads from.
    pub fn model_path(&self, name: &str) -> Result<PathBuf, DreamError> {
        let entry = self.get(name).ok_or_else(|| {
            DreamError::InvalidRequest(format!(
                "no model named {name:?} in {}",
                self.file.display()
            ))
        })?;
        match (&entry.weights, &entry.path, &entry.repo_id) {
            (Some(weights), _, _) => Ok(self.resolve(weights)),
            (None, Some(path), _) => Ok(self.resolve(path)),
            (None, None, Some(repo)) => Err(DreamError::NotSupported(format!(
                "{name}: models from a hub repository ({repo})"
            ))),
            (None, None, None) => Err(DreamError::InvalidModelFile {
                path: self.file.clone(),
                message: format!("{name} has neither weights nor path"),
            }),
        }
    }

    /// The registry as InvokeAI writes it: one mapping per model, in order.
    pub fn to_yaml(&self) -> String {
        let mut mapping = serde_yaml::Mapping::new();
        for (name, entry) in &self.models {
            let value = serde_yaml::to_value(entry).expect("plain data always serialises");
            mapping.insert(serde_yaml::Value::String(name.clone()), value);
        }
        serde_yaml::to_string(&mapping).expect("plain data always serialises")
    }
}

fn parse(text: &str) -> Result<Vec<(String, ModelEntry)>, String> {
    let root: Option<serde_yaml::Mapping> =
        serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    root.unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            let name = match name {
                serde_yaml::Value::String(name) => name,
                other => return Err(format!("a model name must be text, got {other:?}")),
            };
            let entry = serde_yaml::from_value(value).map_err(|e| format!("{name}: {e}"))?;
            Ok((name, entry))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// InvokeAI 2.1's own example stanza, and a diffusers one of 2.3.
    const INVOKEAI: &str = "\
stable-diffusion-1.5:
  description: The newest Stable Diffusion version 1.5 weight file (4.27 GB)
  weights: models/ldm/stable-diffusion-v1/v1-5-pruned-emaonly.ckpt
  config: configs/stable-diffusion/v1-inference.yaml
  width: 512
  height: 512
  vae: ./models/ldm/stable-diffusion-v1/vae-ft-mse-840000-ema-pruned.ckpt
  default: true
inpainting-1.5:
  description: RunwayML SD 1.5 model optimized for inpainting (4.27 GB)
  weights: /data/sd-v1-5-inpainting.ckpt
  config: configs/stable-diffusion/v1-inpainting-inference.yaml
  width: 512
  height: 512
stable-diffusion-2.1:
  description: Stable Diffusion version 2.1 diffusers model (5.21 GB)
  format: diffusers
  path: models/diffusers/stable-diffusion-2-1
";

    #[test]
    fn reads_invokeai_registries() {
        let registry = ModelRegistry {
            file: PathBuf::from("/root/invokeai/configs/models.yaml"),
            models: parse(INVOKEAI).unwrap(),
        };
        let names: Vec<&str> = registry.models().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "stable-diffusion-1.5",
                "inpainting-1.5",
                "stable-diffusion-2.1"
            ]
        );
        assert_eq!(registry.default_model(), Some("stable-diffusion-1.5"));
        let sd15 = registry.get("stable-diffusion-1.5").unwrap();
        assert_eq!((sd15.width, sd15.height), (Some(512), Some(512)));
        assert_eq!(
            registry.model_path("stable-diffusion-1.5").unwrap(),
            Path::new("/root/invokeai/models/ldm/stable-diffusion-v1/v1-5-pruned-emaonly.ckpt")
        );
        assert_eq!(
            registry.model_path("inpainting-1.5").unwrap(),
            Path::new("/data/sd-v1-5-inpainting.ckpt")
        );
        assert_eq!(
            registry.model_path("stable-diffusion-2.1").unwrap(),
            Path::new("/root/invokeai/models/diffusers/stable-diffusion-2-1")
        );
        assert!(registry.model_path("nonesuch").is_err());
    }

    #[test]
    fn writes_what_it_reads_and_keeps_one_default() {
        let dir = std::env::temp_dir().join(format!("dream-registry-{}", std::process::id()));
        let file = dir.join("configs/models.yaml");
        let _ = std::fs::remove_dir_all(&dir);
        let mut registry = ModelRegistry::open(&file).unwrap();
        assert!(registry.is_empty() && registry.default_model().is_none());
        registry.insert(
            "a",
            ModelEntry {
                weights: Some("a.safetensors".into()),
                ..ModelEntry::default()
            },
        );
        registry.insert(
            "b",
            ModelEntry {
                path: Some("models/b".into()),
                width: Some(768),
                default: true,
                ..ModelEntry::default()
            },
        );
        registry.save().unwrap();
        let back = ModelRegistry::open(&file).unwrap();
        assert_eq!(back, registry);
        assert_eq!(back.default_model(), Some("b"));
        assert_eq!(back.model_path("b").unwrap(), dir.join("models/b"));

        registry.insert(
            "a",
            ModelEntry {
                weights: Some("a.safetensors".into()),
                default: true,
                ..ModelEntry::default()
            },
        );
        assert_eq!(registry.default_model(), Some("a"));
        assert!(!registry.get("b").unwrap().default);
        assert!(registry.remove("a").is_some() && registry.remove("a").is_none());
        assert_eq!(registry.default_model(), Some("b"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_registry_is_named_in_the_error() {
        for text in ["- just\n- a list\n", "m:\n  width: wide\n"] {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
