//! Which model renders: `--model NAME|PATH`, the `models.yaml` registry, and a cache of the
//! most recently used loaded models so that switching back is instant.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{anyhow, bail, Context, Result};
use dream_pipeline::model::native_size;
use dream_pipeline::registry::{ModelEntry, ModelRegistry};
use dream_pipeline::{LoadOptions, StableDiffusion};

use crate::fetch::shell_quote;
use crate::hashes::HashCache;
use crate::hub;

/// InvokeAI's default `--max_loaded_models`.
pub const DEFAULT_MAX_LOADED: usize = 2;

/// What `dream` says when it has no model to render with.
pub const NO_MODEL: &str = "no model to render with. Give one with --model: a diffusers \
folder or a single .safetensors/.ckpt Stable Diffusion checkpoint (e.g. \
v1-5-pruned-emaonly.safetensors), or register one at the invoke> prompt with \
`!import_model PATH` (kept in configs/models.yaml; `--config FILE.yaml` names another registry)";

/// A model as the user named it: a registry entry or a file or folder.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelRef {
    Named(String),
    Path(PathBuf),
}

pub struct Models {
    pub registry: ModelRegistry,
    /// `--vae` and `--config DIR` from the command line: they apply to models given by path.
    overrides: LoadOptions,
    current: Option<ModelRef>,
    /// Loaded models, the most recently used last.
    loaded: Vec<(ModelRef, Rc<StableDiffusion>)>,
    max_loaded: usize,
    hashes: HashCache,
}

impl Models {
    pub fn new(
        registry: ModelRegistry,
        overrides: LoadOptions,
        current: Option<&str>,
        max_loaded: usize,
    ) -> Result<Models> {
        let mut models = Models {
            registry,
            overrides,
            current: None,
            loaded: Vec::new(),
            max_loaded: max_loaded.max(1),
            hashes: HashCache::open_default(),
        };
        models.current = match current {
            Some(given) => Some(models.find(given)?),
            None => models
                .registry
                .default_model()
                .map(|name| ModelRef::Named(name.to_string())),
        };
        Ok(models)
    }

    /// A registered name, a hub repository (`hf:ORG/REPO`, fetched now if need be), else an
    /// existing file or folder.
    pub fn find(&self, given: &str) -> Result<ModelRef> {
        if let Some(repo) = hub::Repo::parse(given) {
            return Ok(ModelRef::Path(hub::fetch(&repo?)?));
        }
        if self.registry.get(given).is_some() {
            return Ok(ModelRef::Named(given.to_string()));
        }
        let path = Path::new(given);
        if path.exists() {
            return Ok(ModelRef::Path(path.to_path_buf()));
        }
        let known: Vec<&str> = self.registry.models().map(|(name, _)| name).collect();
        bail!(
            "{given}: no such file or folder, nor a model in {} ({})",
            self.registry.file().display(),
            if known.is_empty() {
                "which has none".to_string()
            } else {
                format!("known: {}", known.join(", "))
            }
        )
    }

    pub fn current(&self) -> Option<&ModelRef> {
        self.current.as_ref()
    }

    /// The default image size of the current model: its registry entry's width and height
    /// (InvokeAI's `models.yaml`), else the size the model was trained at (SD 512, SDXL 1024),
    /// read from its configs without loading it.
    pub fn default_size(&self) -> (Option<usize>, Option<usize>) {
        let Some(current) = &self.current else {
            return (None, None);
        };
        let (width, height) = match current {
            ModelRef::Named(name) => self
                .registry
                .get(name)
                .map_or((None, None), |e| (e.width, e.height)),
            ModelRef::Path(_) => (None, None),
        };
        if width.is_some() && height.is_some() {
            return (width, height);
        }
        let native = match self.loaded.iter().find(|(m, _)| m == current) {
            Some((_, model)) => Some(model.native_size()),
            None => self
                .local_model(current)
                .and_then(|(path, options)| native_size(&path, &options)),
        };
        (width.or(native), height.or(native))
    }

    /// The model's path and load options when it is on disk (a hub entry not yet fetched is
    /// not).
    fn local_model(&self, model: &ModelRef) -> Option<(PathBuf, LoadOptions)> {
        if let ModelRef::Named(name) = model {
            let entry = self.registry.get(name)?;
            if entry.weights.is_none() && entry.path.is_none() {
                return None;
            }
        }
        self.load_options(model).ok()
    }

    /// The SHA-256 of the current model's weights file (`None` for a diffusers folder).
    pub fn current_sha256(&mut self) -> Result<Option<String>> {
        let Some(current) = self.current.clone() else {
            return Ok(None);
        };
        let (path, _) = self.load_options(&current)?;
        if !path.is_file() {
            return Ok(None);
        }
        Ok(Some(self.hashes.sha256(&path)?))
    }

    /// The `--refiner` model `given` (a name or a path, as `--model`), loaded beside the current
    /// one, and its title as A1111's metadata gives it: its name, and for a weights file the
    /// short hash, `name [0123456789]`.
    pub fn refiner(&mut self, given: &str) -> Result<(Rc<StableDiffusion>, String)> {
        let refiner = self.find(given)?;
        let (path, _) = self.load_options(&refiner)?;
        let loaded = self.load(&refiner)?;
        let title = match path.is_file() {
            true => {
                let sha256 = self.hashes.sha256(&path)?;
                format!("{} [{}]", loaded.name(), &sha256[..10])
            }
            false => loaded.name().to_string(),
        };
        Ok((loaded, title))
    }

    /// Makes `given` the current model, loading it now.
    pub fn switch(&mut self, given: &str) -> Result<Rc<StableDiffusion>> {
        let model = self.find(given)?;
        let loaded = self.load(&model)?;
        self.current = Some(model);
        Ok(loaded)
    }

    /// The current model, loaded (or taken from the cache).
    pub fn model(&mut self) -> Result<Rc<StableDiffusion>> {
        let current = self.current.clone().ok_or_else(|| anyhow!(NO_MODEL))?;
        self.load(&current)
    }

    fn load(&mut self, model: &ModelRef) -> Result<Rc<StableDiffusion>> {
        if let Some(at) = self.loaded.iter().position(|(m, _)| m == model) {
            let entry = self.loaded.remove(at);
            let loaded = entry.1.clone();
            self.loaded.push(entry);
            return Ok(loaded);
        }
        let (path, options) = self.load_options(model)?;
        eprintln!(">> loading {}", path.display());
        let loaded = Rc::new(StableDiffusion::load_with(&path, &options)?);
        if self.loaded.len() >= self.max_loaded {
            self.loaded.remove(0);
        }
        self.loaded.push((model.clone(), loaded.clone()));
        Ok(loaded)
    }

    fn load_options(&self, model: &ModelRef) -> Result<(PathBuf, LoadOptions)> {
        match model {
            ModelRef::Path(path) => Ok((path.clone(), self.overrides.clone())),
            ModelRef::Named(name) => {
                let entry = self
                    .registry
                    .get(name)
                    .ok_or_else(|| anyhow!("model {name} is no longer registered"))?;
                // InvokeAI 2.3's hub entries: fetched at first use.
                let path = match (&entry.weights, &entry.path, &entry.repo_id) {
                    (None, None, Some(repo)) => hub::fetch(&hub_repo(repo)?)?,
                    _ => self.registry.model_path(name)?,
                };
                let mut options = self.overrides.clone();
                if let Some(vae) = &entry.vae {
                    options.vae = Some(self.registry.resolve(vae));
                }
                // A diffusers folder describes a single-file checkpoint; of InvokeAI's LDM .yaml
                // configs only the prediction type matters (the tensor shapes tell the rest),
                // and one that is not there (InvokeAI's own configs/ folder) is passed over.
                if let Some(config) = &entry.config {
                    let config = self.registry.resolve(config);
                    if config.is_dir() {
                        options.config_dir = Some(config);
                    } else if config.is_file() {
                        options.ldm_config = Some(config);
                    }
                }
                Ok((path, options))
            }
        }
    }

    /// `!models`: every registered model, the current one marked.
    pub fn list(&self) -> String {
        if self.registry.is_empty() {
            return format!("no models in {}", self.registry.file().display());
        }
        let mut lines = Vec::new();
        for (name, entry) in self.registry.models() {
            let current = self.current == Some(ModelRef::Named(name.to_string()));
            let loaded = self
                .loaded
                .iter()
                .any(|(m, _)| *m == ModelRef::Named(name.to_string()));
            let status = match (current, loaded) {
                (true, _) => "active",
                (false, true) => "cached",
                (false, false) => "not loaded",
            };
            lines.push(format!(
                "{name:<24} {status:<11} {}",
                entry.description.as_deref().unwrap_or("")
            ));
        }
        lines.join("\n")
    }

    /// `!import_model PATH [NAME]`: registers a file, folder or `hf:ORG/REPO` (named after it
    /// by default).
    pub fn import(&mut self, path: &str, name: Option<&str>) -> Result<String> {
        if let Some(repo) = hub::Repo::parse(path) {
            let repo = repo?;
            let name = name.unwrap_or_else(|| repo.id.rsplit('/').next().unwrap_or(&repo.id));
            let entry = ModelEntry {
                description: Some(format!("{} from the hub", repo.id)),
                repo_id: Some(repo.id.clone()),
                format: Some("diffusers".to_string()),
                ..ModelEntry::default()
            };
            return self.register(name, entry);
        }
        let file = Path::new(path);
        anyhow::ensure!(file.exists(), "{path}: no such file or folder");
        let name = match name {
            Some(name) => name.to_string(),
            None => file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .ok_or_else(|| anyhow!("{path}: cannot name a model after it"))?,
        };
        let absolute = std::fs::canonicalize(file)
            .with_context(|| format!("{path}: cannot resolve"))?
            .display()
            .to_string();
        let entry = ModelEntry {
            description: Some(format!("imported from {path}")),
            weights: file.is_file().then(|| absolute.clone()),
            path: file.is_dir().then_some(absolute),
            format: file.is_dir().then(|| "diffusers".to_string()),
            ..ModelEntry::default()
        };
        self.register(&name, entry)
    }

    /// Adds a new model to the registry file; the first one becomes the default.
    fn register(&mut self, name: &str, entry: ModelEntry) -> Result<String> {
        anyhow::ensure!(
            self.registry.get(name).is_none(),
            "a model named {name} is already registered (!del_model {name} first)"
        );
        let entry = ModelEntry {
            default: self.registry.is_empty(),
            ..entry
        };
        self.registry.insert(name, entry);
        self.registry.save()?;
        Ok(name.to_string())
    }

    /// `!edit_model NAME key=value ...`: changes fields of a registered model.
    pub fn edit(&mut self, name: &str, changes: &[String]) -> Result<()> {
        let mut entry = self
            .registry
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("no model named {name}"))?;
        for change in changes {
            let (key, value) = change
                .split_once('=')
                .ok_or_else(|| anyhow!("{change}: expected key=value"))?;
            let text = || (!value.is_empty()).then(|| value.to_string());
            let number = || -> Result<Option<usize>> {
                text()
                    .map(|v| {
                        v.parse()
                            .with_context(|| format!("{key}: not a number: {v}"))
                    })
                    .transpose()
            };
            match key {
                "description" => entry.description = text(),
                "weights" => entry.weights = text(),
                "path" => entry.path = text(),
                "config" => entry.config = text(),
                "vae" => entry.vae = text(),
                "width" => entry.width = number()?,
                "height" => entry.height = number()?,
                "default" => {
                    entry.default = value
                        .parse()
                        .with_context(|| format!("default: true or false, got {value}"))?
                }
                _ => bail!(
                    "{key}: not a model field (description, weights, path, config, vae, \
                     width, height, default)"
                ),
            }
        }
        self.registry.insert(name, entry);
        self.registry.save()?;
        // A cached copy was loaded with the old settings.
        self.loaded
            .retain(|(m, _)| *m != ModelRef::Named(name.to_string()));
        Ok(())
    }

    /// `!edit_model NAME` alone: the command that sets every field as it is now.
    pub fn edit_command(&self, name: &str) -> Result<String> {
        let entry = self
            .registry
            .get(name)
            .ok_or_else(|| anyhow!("no model named {name}"))?;
        let mut command = format!("!edit_model {name}");
        let mut field = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                command.push_str(&format!(" {}", shell_quote(&format!("{key}={value}"))));
            }
        };
        field("description", entry.description.clone());
        field("weights", entry.weights.clone());
        field("path", entry.path.clone());
        field("config", entry.config.clone());
        field("vae", entry.vae.clone());
        field("width", entry.width.map(|v| v.to_string()));
        field("height", entry.height.map(|v| v.to_string()));
        field("default", Some(entry.default.to_string()));
        Ok(command)
    }

    /// `!del_model NAME`.
    pub fn delete(&mut self, name: &str) -> Result<()> {
        self.registry
            .remove(name)
            .ok_or_else(|| anyhow!("no model named {name}"))?;
        self.registry.save()?;
        let gone = ModelRef::Named(name.to_string());
        self.loaded.retain(|(m, _)| *m != gone);
        if self.current.as_ref() == Some(&gone) {
            self.current = None;
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<String> {
        self.registry.models().map(|(n, _)| n.to_string()).collect()
    }
}

/// A registry's `repo_id` (`ORG/REPO`, optionally `@REVISION`) as a hub repository.
fn hub_repo(repo_id: &str) -> Result<hub::Repo> {
    hub::Repo::parse(&format!("hf:{repo_id}")).expect("the hf: prefix is there")
}
