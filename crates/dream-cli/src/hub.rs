//! `--model hf:ORG/REPO[@REVISION]` and `dream preload`: a diffusers model from the Hugging Face
//! hub (or the server `HF_ENDPOINT` names, as huggingface_hub reads it), fetched once into a
//! local folder and used from there.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Written once every file is in: from then on the folder is used without asking the hub.
const COMPLETE: &str = ".dream-complete";

/// The diffusers components Dream loads, with the stem of their weight files.
const COMPONENTS: &[(&str, &str)] = &[
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
    ("tokenizer", ""),
    ("scheduler", ""),
];

/// A hub repository: `ORG/REPO` at a revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Repo {
    pub id: String,
    pub revision: String,
}

impl Repo {
    /// `hf:ORG/REPO` or `hf:ORG/REPO@REVISION`; `None` for anything without the `hf:` prefix.
    pub fn parse(model: &str) -> Option<Result<Repo>> {
        let spec = model.strip_prefix("hf:")?;
        let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !part.starts_with('.')
        };
        let parts: Vec<&str> = id.split('/').collect();
        Some(match parts.as_slice() {
            [org, name] if valid(org) && valid(name) && valid(revision) => Ok(Repo {
                id: id.to_string(),
                revision: revision.to_string(),
            }),
            _ => Err(anyhow!(
                "{model}: expected hf:ORG/REPO or hf:ORG/REPO@REVISION"
            )),
        })
    }

    /// Where the repository's files are kept.
    pub fn folder(&self) -> Result<PathBuf> {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set"))?;
        Ok(cache.join("dream/hub").join(format!(
            "{}@{}",
            self.id.replace('/', "--"),
            self.revision
        )))
    }
}

#[derive(Deserialize)]
struct RepoInfo {
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

/// The local folder of `repo`, fetching what is missing first.
pub fn fetch(repo: &Repo) -> Result<PathBuf> {
    let folder = repo.folder()?;
    if folder.join(COMPLETE).is_file() {
        return Ok(folder);
    }
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
    let endpoint = endpoint.trim_end_matches('/');
    let info_url = format!(
        "{endpoint}/api/models/{}/revision/{}",
        repo.id, repo.revision
    );
    let info: RepoInfo = serde_json::from_str(&get(&info_url)?.read_to_string()?)
        .with_context(|| format!("{info_url}: not a model description"))?;
    let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let wanted = wanted_files(&names);
    if !wanted.contains(&"model_index.json") {
        bail!("{}: not a diffusers model (no model_index.json)", repo.id);
    }
    for name in wanted {
        let path = folder.join(name);
        if path.is_file() {
            continue;
        }
        eprintln!(">> fetching {}/{name}", repo.id);
        let url = format!("{endpoint}/{}/resolve/{}/{name}", repo.id, repo.revision);
        download(&url, &path)?;
    }
    std::fs::write(folder.join(COMPLETE), "")
        .with_context(|| format!("cannot write in {}", folder.display()))?;
    Ok(folder)
}

/// The files Dream needs out of a repository's: `model_index.json`, each component's
/// configuration and tokenizer files, and one set of weights per component, in the loader's
/// order of preference (`dream_models::weights::component_files`).
fn wanted_files<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut wanted: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| *n == "model_index.json")
        .collect();
    for (component, stem) in COMPONENTS {
        let in_component = |name: &&str| {
            name.strip_prefix(component)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|file| !file.contains('/'))
        };
        let files: Vec<&str> = names.iter().copied().filter(in_component).collect();
        let file_name = |name: &str| name.rsplit('/').next().unwrap_or_default().to_string();
        wanted.extend(
            files
                .iter()
                .filter(|n| {
                    (n.ends_with(".json") && !n.ends_with(".index.json")) || n.ends_with(".txt")
                })
                .copied(),
        );
        if stem.is_empty() {
            continue;
        }
        let bin_stem = if *stem == "model" {
            "pytorch_model"
        } else {
            stem
        };
        let preferred = [
            format!("{stem}.safetensors"),
            format!("{stem}.fp16.safetensors"),
            format!("{stem}.safetensors.index.json"),
            format!("{bin_stem}.bin"),
            format!("{bin_stem}.fp16.bin"),
        ];
        let Some(choice) = preferred
            .iter()
            .find_map(|p| files.iter().find(|f| file_name(f) == *p))
        else {
            continue;
        };
        wanted.push(choice);
        // A sharded checkpoint: its index and every shard.
        if choice.ends_with(".index.json") {
            let shard = format!("{stem}-");
            wanted.extend(files.iter().copied().filter(|f| {
                let name = file_name(f);
                name.starts_with(&shard) && name.ends_with(".safetensors")
            }));
        }
    }
    wanted
}

fn get(url: &str) -> Result<ureq::Body> {
    let mut request = ureq::get(url);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let response = request
        .call()
        .with_context(|| format!("cannot fetch {url}"))?;
    Ok(response.into_body())
}

/// Downloads `url` to `path` through a `.part` file, so that an interrupted download is
/// never taken for a whole file.
fn download(url: &str, path: &Path) -> Result<()> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut file =
        std::fs::File::create(&part).with_context(|| format!("cannot write {}", part.display()))?;
    let mut body = get(url)?.into_reader();
    std::io::copy(&mut body, &mut file).with_context(|| format!("cannot fetch {url}"))?;
    file.flush()?;
    std::fs::rename(&part, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `dream preload hf:ORG/REPO…`: fetches each model now (InvokeAI's preload script).
pub fn preload(models: &[String]) -> Result<()> {
    anyhow::ensure!(
        !models.is_empty(),
        "usage: dream preload hf:ORG/REPO[@REVISION] ..."
    );
    for model in models {
        let repo = Repo::parse(model).ok_or_else(|| anyhow!("{model}: expected hf:ORG/REPO"))??;
        println!("{model}: {}", fetch(&repo)?.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_with_hf_prefix_are_repositories() {
        assert!(Repo::parse("models/sd15").is_none());
        let repo = Repo::parse("hf:org/sd-1.5@fp16").unwrap().unwrap();
        assert_eq!(
            (repo.id.as_str(), repo.revision.as_str()),
            ("org/sd-1.5", "fp16")
        );
        assert_eq!(Repo::parse("hf:org/x").unwrap().unwrap().revision, "main");
        for bad in ["hf:org", "hf:org/x/y", "hf:../x", "hf:org/x@", "hf:org/.."] {
            assert!(Repo::parse(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn one_set_of_weights_per_component() {
        let names = [
            "model_index.json",
            "README.md",
            "unet/config.json",
            "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "text_encoder/config.json",
            "text_encoder/model.safetensors.index.json",
            "text_encoder/model-00001-of-00002.safetensors",
            "text_encoder/model-00002-of-00002.safetensors",
            "text_encoder/flax_model.msgpack",
            "tokenizer/merges.txt",
            "tokenizer/vocab.json",
            "scheduler/scheduler_config.json",
            "safety_checker/model.safetensors",
        ];
        // Pickles, other frameworks' weights, fp16 beside full precision and components a
        // pipeline does not load are left behind; everything else is kept, in order.
        let left = [
            "README.md",
            "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "text_encoder/flax_model.msgpack",
            "safety_checker/model.safetensors",
        ];
        let kept: Vec<&str> = names.into_iter().filter(|n| !left.contains(n)).collect();
        assert_eq!(wanted_files(&names), kept);
    }
}
