//! Opening weight files, and serving their tensors to the networks under diffusers' names.
//!
//! Stable Diffusion weights come as diffusers folders (`unet/`, `vae/`, `text_encoder/`, each a
//! `config.json` plus safetensors or `.bin` weights) or as one file in the original
//! latent-diffusion layout (A1111's `.safetensors`/`.ckpt`). Either way the result is an
//! [`SdComponents`]: per network a config and a [`Weights`], which hands out a
//! `candle_nn::VarBuilder` speaking diffusers' names; `dream_core::keymap` does the renaming.
//!
//! Files are recognised by their content, not their extension. Opening one maps it just long
//! enough to parse its header; a tensor is read (and converted to the requested dtype) only when
//! a network asks for it, with a positioned read straight into the tensor's buffer. Copying out
//! of a long-lived map instead would keep every touched page of the file resident next to the
//! copy, doubling the weights' share of peak memory. PyTorch zip
//! archives are read without Python's unpickler: `dream_core::pickle_guard` interprets
//! `data.pkl` as data and refuses anything a plain tensor checkpoint would not contain, so a
//! malicious `.ckpt` is reported, never run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use dream_core::keymap::{self, KeyMapError, Part, Source, TextEncoderLayout};
use dream_core::pickle_guard::{self, PickleError, Value};
use serde::de::DeserializeOwned;

use crate::config::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::detect::{self, ModelKind, Prediction};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is damaged or not what its format promises.
    #[error("{}: {problem}", path.display())]
    Corrupt { path: PathBuf, problem: String },
    #[error("{}: {problem}", path.display())]
    Unsupported { path: PathBuf, problem: String },
    #[error("{}: {source}", path.display())]
    Pickle { path: PathBuf, source: PickleError },
    #[error("{} does not look like a Stable Diffusion checkpoint: {source}", path.display())]
    NotStableDiffusion { path: PathBuf, source: KeyMapError },
    #[error("{}: cannot infer the {what} from the tensor shapes: {why}", path.display())]
    Undetectable {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error("{}: invalid config: {source}", path.display())]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: no weights file (looked for {looked_for})", dir.display())]
    NoWeights { dir: PathBuf, looked_for: String },
    #[error("{}: tensor {name}: {problem}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        problem: String,
    },
}

/// How a tensor is laid out in the file: `shape` elements of `dtype`, element `i` at
/// `region.start + (offset + Σ iₖ·strides[k])·size`. Safetensors tensors are contiguous regions
/// of their own; PyTorch tensors are strided views into a storage entry of the zip.
#[derive(Debug, Clone)]
struct TensorInfo {
    /// `Err` holds the stored type's name when candle cannot represent it.
    dtype: Result<DType, String>,
    shape: Vec<usize>,
    region: std::ops::Range<usize>,
    offset: usize,
    strides: Vec<usize>,
}

/// One opened weights file: its tensor names, shapes and dtypes, and where their bytes are.
pub struct Checkpoint {
    path: PathBuf,
    file: std::fs::File,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a safetensors file or a PyTorch zip archive (`.ckpt`, `.pt`, `.bin`), whatever its
    /// extension says, and validates every tensor's extent against the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, WeightsError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| WeightsError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(corrupt(&path, "the file is empty"));
        }
        // SAFETY: the map is read-only and dropped before `open` returns; like every
        // memory-mapping loader (candle's, safetensors') this assumes nobody truncates the file
        // meanwhile.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let tensors = if mmap.starts_with(b"PK\x03\x04") || mmap.starts_with(b"PK\x05\x06") {
            torch_zip_tensors(&path, &mmap)?
        } else if mmap.get(8) == Some(&b'{') || mmap.len() <= 8 {
            safetensors_tensors(&path, &mmap)?
        } else if mmap.first() == Some(&0x80) && mmap.get(1).is_some_and(|p| *p <= 5) {
            return Err(legacy_pickle(&path, &mmap));
        } else {
            return Err(WeightsError::Unsupported {
                path,
                problem: "not a recognised weights format: expected safetensors or a PyTorch zip \
                          archive (.ckpt/.pt/.bin)"
                    .into(),
            });
        };
        Ok(Checkpoint {
            path,
            file,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    /// The stored dtype, or `None` for an unknown name or a type candle cannot hold.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.tensors.get(name)?.dtype.as_ref().ok().copied()
    }

    /// The tensor as stored (shape and dtype), on `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor, WeightsError> {
        let fail = |problem: String| WeightsError::Tensor {
            path: self.path.clone(),
            name: name.to_owned(),
            problem,
        };
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| fail("no such tensor".into()))?;
        let dtype = info
            .dtype
            .clone()
            .map_err(|stored| fail(format!("stored as {stored}, which cannot be read")))?;
        let io = |e: std::io::Error| fail(format!("cannot read its data: {e}"));
        let tensor = if info.strides == contiguous_strides(&info.shape) {
            let start = (info.region.start + info.offset * dtype.size_in_bytes()) as u64;
            let numel = info.shape.iter().product();
            match dtype {
                DType::F32 => self.read_vec::<f32>(start, numel, &info.shape, device),
                DType::F16 => self.read_vec::<half::f16>(start, numel, &info.shape, device),
                DType::BF16 => self.read_vec::<half::bf16>(start, numel, &info.shape, device),
                _ => {
                    let mut bytes = vec![0u8; numel * dtype.size_in_bytes()];
                    read_exact_at(&self.file, &mut bytes, start).map_err(io)?;
                    Tensor::from_raw_buffer(&bytes, dtype, &info.shape, device)
                }
            }
        } else {
            let mut region = vec![0u8; info.region.len()];
            read_exact_at(&self.file, &mut region, info.region.start as u64).map_err(io)?;
            let size = dtype.size_in_bytes();
            let bytes = gather(&region, size, info.offset, &info.shape, &info.strides);
            Tensor::from_raw_buffer(&bytes, dtype, &info.shape, device)
        };
        tensor.map_err(|e| fail(e.to_string()))
    }

    /// `numel` elements of `T` stored from byte `start` on, read into the tensor's own buffer.
    fn read_vec<T: candle_core::WithDType>(
        &self,
        start: u64,
        numel: usize,
        shape: &[usize],
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = vec![T::zero(); numel];
        // SAFETY: the bytes cover exactly `data`'s initialised elements, and every bit pattern
        // is a valid value of candle's element types (plain integers and floats).
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                data.as_mut_ptr().cast::<u8>(),
                std::mem::size_of_val(data.as_slice()),
            )
        };
        read_exact_at(&self.file, bytes, start).map_err(candle_core::Error::wrap)?;
        Tensor::from_vec(data, shape, device)
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn corrupt(path: &Path, problem: impl Into<String>) -> WeightsError {
    WeightsError::Corrupt {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1];
    }
    strides
}

/// Copies a strided view into contiguous bytes (rare: torch saves views of shared storages).
fn gather(
    region: &[u8],
    size: usize,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel * size);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..numel {
        let element = offset + index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&region[element * size..(element + 1) * size]);
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

fn safetensors_dtype(dtype: safetensors::Dtype) -> Result<DType, String> {
    use safetensors::Dtype as S;
    Ok(match dtype {
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        S::I64 => DType::I64,
        S::I32 => DType::I32,
        S::I16 => DType::I16,
        S::U32 => DType::U32,
        S::U8 | S::BOOL => DType::U8,
        S::F8_E4M3 => DType::F8E4M3,
        other => return Err(format!("{other:?}")),
    })
}

fn safetensors_tensors(
    path: &Path,
    data: &[u8],
) -> Result<BTreeMap<String, TensorInfo>, WeightsError> {
    use safetensors::SafeTensorError as E;
    let (header_len, metadata) = match safetensors::SafeTensors::read_metadata(data) {
        Ok(ok) => ok,
        Err(e) => {
            let declared = data
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
            let problem = match e {
                E::HeaderTooSmall => format!(
                    "only {} bytes, too short for a safetensors header (truncated?)",
                    data.len()
                ),
                E::InvalidHeaderLength => format!(
                    "the safetensors header is declared as {} bytes, past the end of the {}-byte \
                     file (truncated?)",
                    declared.unwrap_or_default(),
                    data.len()
                ),
                E::HeaderTooLarge => format!(
                    "the safetensors header is declared as {} bytes, more than safetensors allows: \
                     not a safetensors file",
                    declared.unwrap_or_default()
                ),
                E::InvalidHeader(_) => "the safetensors header is not UTF-8 text".into(),
                E::InvalidHeaderDeserialization(e) => {
                    format!("the safetensors header is not valid JSON: {e}")
                }
                E::MetadataIncompleteBuffer => format!(
                    "the tensors the header lists do not end where the {}-byte file ends \
                     (truncated or appended to)",
                    data.len()
                ),
                E::InvalidOffset(name) => {
                    format!("tensor {name}: its data offsets overlap or leave a gap")
                }
                E::TensorInvalidInfo => {
                    "a tensor's byte range does not match its shape and dtype".into()
                }
                other => format!("invalid safetensors file: {other}"),
            };
            return Err(corrupt(path, problem));
        }
    };
    let data_start = 8 + header_len;
    Ok(metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (start, end) = info.data_offsets;
            let tensor = TensorInfo {
                dtype: safetensors_dtype(info.dtype),
                strides: contiguous_strides(&info.shape),
                shape: info.shape.clone(),
                region: data_start + start..data_start + end,
                offset: 0,
            };
            (name, tensor)
        })
        .collect())
}

/// A file that starts like a pickle: PyTorch's pre-1.6 format (several pickles, then raw
/// storages) or a bare pickle. The pickles are checked first, so that a hostile file is named
/// as such; the format is refused either way.
fn legacy_pickle(path: &Path, data: &[u8]) -> WeightsError {
    let mut rest = data;
    // The legacy format writes five pickles (magic number, protocol, system info, the object,
    // the storage keys); the storage data that follows is not a pickle.
    for _ in 0..5 {
        if rest.first() != Some(&0x80) {
            break;
        }
        match pickle_guard::load_prefix(rest) {
            Ok((_, used)) => rest = &rest[used..],
            Err(source) => {
                return WeightsError::Pickle {
                    path: path.to_path_buf(),
                    source,
                }
            }
        }
    }
    WeightsError::Unsupported {
        path: path.to_path_buf(),
        problem: "a bare pickle or PyTorch's pre-1.6 serialization, which is not supported: \
                  re-save it with a current PyTorch or convert it to safetensors"
            .into(),
    }
}

fn torch_zip_tensors(
    path: &Path,
    data: &[u8],
) -> Result<BTreeMap<String, TensorInfo>, WeightsError> {
    let zip_error =
        |e: zip::result::ZipError| corrupt(path, format!("not a readable zip archive: {e}"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(zip_error)?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let pickles: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let pkl_name = match pickles.as_slice() {
        [one] => one.as_str(),
        [] => {
            return Err(WeightsError::Unsupported {
                path: path.to_path_buf(),
                problem: "a zip archive without a data.pkl: not a PyTorch checkpoint".into(),
            })
        }
        _ => return Err(corrupt(path, "a zip archive with several data.pkl files")),
    };
    let archive = pkl_name.trim_end_matches("/data.pkl").to_owned();

    let mut byteorder = String::new();
    if let Ok(mut entry) = zip.by_name(&format!("{archive}/byteorder")) {
        use std::io::Read;
        entry
            .by_ref()
            .take(16)
            .read_to_string(&mut byteorder)
            .map_err(|e| corrupt(path, format!("unreadable byteorder entry: {e}")))?;
    }
    if byteorder.trim() == "big" {
        return Err(WeightsError::Unsupported {
            path: path.to_path_buf(),
            problem: "saved on a big-endian machine".into(),
        });
    }

    let pickle_bytes = stored_entry(path, &mut zip, pkl_name, data)?;
    let object = pickle_guard::load(pickle_bytes).map_err(|source| WeightsError::Pickle {
        path: path.to_path_buf(),
        source,
    })?;
    // A1111/CompVis checkpoints nest the weights under "state_dict"; diffusers' .bin files and
    // many merges are the state dict itself.
    let state_dict = match object.get("state_dict") {
        Some(inner) if inner.as_dict().is_some() => inner,
        _ => &object,
    };
    let Some(entries) = state_dict.as_dict() else {
        return Err(WeightsError::Unsupported {
            path: path.to_path_buf(),
            problem: "the pickle holds no state dict".into(),
        });
    };

    let mut tensors = BTreeMap::new();
    for (key, value) in entries {
        let (Some(name), Some(tensor)) = (key.as_str(), rebuild_tensor_args(value)) else {
            // Non-tensor entries (step counters, optimizer state, nested dicts) are not weights.
            continue;
        };
        let bad = |problem: &str| WeightsError::Tensor {
            path: path.to_path_buf(),
            name: name.to_owned(),
            problem: problem.to_owned(),
        };
        let parsed =
            parse_rebuild(tensor).ok_or_else(|| bad("malformed tensor record in data.pkl"))?;
        let entry = format!("{archive}/data/{}", parsed.storage_key);
        let region_bytes = stored_entry(path, &mut zip, &entry, data)
            .map_err(|e| bad(&format!("storage {entry}: {e}")))?;
        let region_start = region_bytes.as_ptr() as usize - data.as_ptr() as usize;
        let size = parsed.dtype.as_ref().map_or(1, |d| d.size_in_bytes());
        let needed = storage_extent(parsed.offset, &parsed.shape, &parsed.strides)
            .and_then(|elements| elements.checked_mul(size));
        match needed {
            Some(bytes) if bytes <= region_bytes.len() => {}
            _ => return Err(bad("its view reaches past the end of its storage")),
        }
        tensors.insert(
            name.to_owned(),
            TensorInfo {
                dtype: parsed.dtype,
                shape: parsed.shape,
                region: region_start..region_start + region_bytes.len(),
                offset: parsed.offset,
                strides: parsed.strides,
            },
        );
    }
    Ok(tensors)
}

/// The bytes of a zip entry inside the archive. PyTorch stores entries uncompressed, so they
/// are read in place.
fn stored_entry<'a>(
    path: &Path,
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    data: &'a [u8],
) -> Result<&'a [u8], WeightsError> {
    let entry = zip
        .by_name(name)
        .map_err(|e| corrupt(path, format!("zip entry {name}: {e}")))?;
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(WeightsError::Unsupported {
            path: path.to_path_buf(),
            problem: format!("zip entry {name} is compressed, which PyTorch never does"),
        });
    }
    let start = entry.data_start().and_then(|s| usize::try_from(s).ok());
    let len = usize::try_from(entry.size()).ok();
    match (start, len) {
        (Some(start), Some(len)) if start.checked_add(len).is_some_and(|end| end <= data.len()) => {
            Ok(&data[start..start + len])
        }
        _ => Err(corrupt(
            path,
            format!("zip entry {name} reaches past the end of the file (truncated?)"),
        )),
    }
}

/// The `_rebuild_tensor_v2(...)` arguments of a state-dict value, looking through
/// `_rebuild_parameter` (saved `nn.Parameter`s).
fn rebuild_tensor_args(value: &Value) -> Option<&[Value]> {
    let Value::Call { callable, args } = value else {
        return None;
    };
    let Value::Global { module, name } = callable.as_ref() else {
        return None;
    };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") => Some(args),
        ("torch._utils", "_rebuild_parameter") => rebuild_tensor_args(args.first()?),
        _ => None,
    }
}

struct TorchTensor {
    storage_key: String,
    dtype: Result<DType, String>,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks)` where
/// `storage` is the persistent id `('storage', torch.XStorage, key, location, numel)`.
fn parse_rebuild(args: &[Value]) -> Option<TorchTensor> {
    let [storage, offset, size, stride, ..] = args else {
        return None;
    };
    let Value::PersistentId(id) = storage else {
        return None;
    };
    let [kind, storage_type, key, _location, _numel] = id.as_tuple()? else {
        return None;
    };
    if kind.as_str() != Some("storage") {
        return None;
    }
    let Value::Global { module, name } = storage_type else {
        return None;
    };
    let dtype = match (module.as_str(), name.as_str()) {
        ("torch", "FloatStorage") => Ok(DType::F32),
        ("torch", "HalfStorage") => Ok(DType::F16),
        ("torch", "BFloat16Storage") => Ok(DType::BF16),
        ("torch", "DoubleStorage") => Ok(DType::F64),
        ("torch", "LongStorage") => Ok(DType::I64),
        ("torch", "IntStorage") => Ok(DType::I32),
        ("torch", "ShortStorage") => Ok(DType::I16),
        ("torch", "ByteStorage" | "BoolStorage") => Ok(DType::U8),
        (module, name) => Err(format!("{module}.{name}")),
    };
    let dims = |v: &Value| -> Option<Vec<usize>> {
        v.as_tuple()?
            .iter()
            .map(|d| usize::try_from(d.as_int()?).ok())
            .collect()
    };
    let shape = dims(size)?;
    let strides = dims(stride)?;
    if shape.len() != strides.len() {
        return None;
    }
    Some(TorchTensor {
        storage_key: key.as_str()?.to_owned(),
        dtype,
        offset: usize::try_from(offset.as_int()?).ok()?,
        shape,
        strides,
    })
}

/// The number of storage elements a strided view needs, or `None` on overflow.
fn storage_extent(offset: usize, shape: &[usize], strides: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape
        .iter()
        .zip(strides)
        .try_fold(offset, |acc, (n, s)| {
            acc.checked_add((n - 1).checked_mul(*s)?)
        })?
        .checked_add(1)
}

/// One network's tensors under diffusers' names, wherever they are stored.
#[derive(Clone)]
pub struct Weights {
    files: Vec<Arc<Checkpoint>>,
    /// diffusers name → (index into `files`, where it is stored).
    map: Arc<BTreeMap<String, (usize, Source)>>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field(
                "files",
                &self.files.iter().map(|c| c.path()).collect::<Vec<_>>(),
            )
            .field("tensors", &self.map.len())
            .finish()
    }
}

impl Weights {
    fn new(files: Vec<Arc<Checkpoint>>, map: BTreeMap<String, (usize, Source)>) -> Weights {
        Weights {
            files,
            map: Arc::new(map),
        }
    }

    /// A file's tensors under their own names (for files already in diffusers' naming).
    pub fn open(path: &Path) -> Result<Weights, WeightsError> {
        Weights::open_renamed(path, |name| Some(name.to_owned()))
    }

    /// A file's tensors under the names `rename` gives them (`None` leaves a tensor out).
    pub fn open_renamed(
        path: &Path,
        rename: impl Fn(&str) -> Option<String>,
    ) -> Result<Weights, WeightsError> {
        let file = Arc::new(Checkpoint::open(path)?);
        let map = file
            .names()
            .filter_map(|key| Some((rename(key)?, Source::whole(key))))
            .collect();
        Ok(Weights::renamed(file, map))
    }

    /// A single file's tensors under the names `map` gives them.
    fn renamed(file: Arc<Checkpoint>, map: keymap::KeyMap) -> Weights {
        let map = map
            .into_iter()
            .map(|(name, source)| (name, (0, source)))
            .collect();
        Weights::new(vec![file], map)
    }

    /// The (first) file these weights come from, for messages.
    pub fn path(&self) -> &Path {
        self.files.first().map_or(Path::new(""), |f| f.path())
    }

    /// The diffusers names served, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The shape as served: a fused tensor's slice has its share of the first dimension, a
    /// transposed one its two dimensions swapped.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (file, source) = self.map.get(name)?;
        let mut shape = self.files[*file].shape(&source.key)?.to_vec();
        if let (Some(part), Some(first)) = (source.part, shape.first_mut()) {
            *first /= part.of;
        }
        if source.transposed {
            shape.reverse();
        }
        Some(shape)
    }

    /// The tensor as served (see [`Weights::shape`]), in its stored dtype, on `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor, WeightsError> {
        let Some((file, source)) = self.map.get(name) else {
            return Err(WeightsError::Tensor {
                path: self.path().to_path_buf(),
                name: name.to_owned(),
                problem: "the checkpoint has no such tensor".into(),
            });
        };
        let file = &self.files[*file];
        let fail = |problem: String| WeightsError::Tensor {
            path: file.path().to_path_buf(),
            name: source.key.clone(),
            problem,
        };
        let mut tensor = file.tensor(&source.key, device)?;
        if let Some(Part { index, of }) = source.part {
            let rows = tensor.dim(0).unwrap_or(0);
            if rows % of != 0 {
                return Err(fail(format!(
                    "{rows} rows cannot be split into {of} equal parts"
                )));
            }
            let step = rows / of;
            tensor = tensor
                .narrow(0, index * step, step)
                .map_err(|e| fail(e.to_string()))?;
        }
        if source.transposed {
            if tensor.rank() != 2 {
                return Err(fail(format!(
                    "shape {:?}, where a projection matrix was expected",
                    tensor.dims()
                )));
            }
            tensor = tensor
                .t()
                .and_then(|t| t.contiguous())
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(tensor)
    }

    /// A VarBuilder over these weights: every tensor is converted to `dtype` as it is loaded.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }
}

impl SimpleBackend for Weights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self
            .tensor(name, device)
            .map_err(candle_core::Error::wrap)?;
        let tensor = if tensor.dims() == shape.dims() {
            tensor
        } else if same_but_unit_dims(tensor.dims(), shape.dims()) {
            // The latent-diffusion VAE attention uses 1×1 convolutions ([C,C,1,1]) where
            // diffusers uses linear layers ([C,C]): the same weights.
            tensor.reshape(shape.clone())?
        } else {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name} (from {})", self.path().display()),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt());
        };
        tensor.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.tensor(name, device)
            .map_err(candle_core::Error::wrap)?
            .to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// Whether two shapes differ only by trailing size-1 dimensions.
fn same_but_unit_dims(a: &[usize], b: &[usize]) -> bool {
    let trim = |s: &[usize]| s.len() - s.iter().rev().take_while(|d| **d == 1).count();
    let (a, b) = (&a[..trim(a)], &b[..trim(b)]);
    a == b && !a.is_empty()
}

/// A network's configuration and its weights.
#[derive(Debug, Clone)]
pub struct Component<C> {
    pub config: C,
    pub weights: Weights,
}

/// The networks of a Stable Diffusion model: UNet, VAE and text encoder, and for SDXL a second
/// text encoder. Each network's VarBuilder is made with the dtype it should run in
/// (`component.weights.var_builder(dtype, &device)`); a VAE is often kept in f32 when the UNet
/// runs in f16.
#[derive(Debug, Clone)]
pub struct SdComponents {
    pub unet: Component<UNetConfig>,
    pub vae: Component<VaeConfig>,
    /// CLIP ViT-L/14 (SD 1.x, SDXL) or OpenCLIP ViT-H/14 (SD 2.x), as transformers'
    /// `CLIPTextModel` (`text_model.*`). `None` for the SDXL refiner, whose one encoder is
    /// `text_encoder_2` (diffusers' layout).
    pub text_encoder: Option<Component<ClipTextConfig>>,
    /// SDXL's OpenCLIP ViT-bigG/14, as transformers' `CLIPTextModelWithProjection`:
    /// `text_model.*` plus `text_projection.weight` ([projection_dim, hidden_size], no bias),
    /// which projects its pooled output. `None` for SD 1.x/2.x.
    pub text_encoder_2: Option<Component<ClipTextConfig>>,
    pub kind: ModelKind,
}

/// Loads an original latent-diffusion / A1111 single-file checkpoint (`.safetensors` or `.ckpt`):
/// SD 1.x, 2.x, or SDXL base (Stability's `sgm` layout, with both text encoders).
///
/// Without `config_dir`, the networks' configs are inferred from the tensor shapes by
/// [`detect`], which assumes what shapes cannot show: Stable Diffusion's 32 GroupNorm groups, its
/// head counts, and its prediction type (see [`detect::model_kind`]). With `config_dir` (a
/// diffusers model folder, as in diffusers' `from_single_file(config=...)`), its
/// `unet/config.json`, `vae/config.json`, `text_encoder/config.json` (and for SDXL
/// `text_encoder_2/config.json`) and `scheduler/scheduler_config.json` are used instead; a config that does not fit the tensors
/// shows up as a shape error naming the tensor when the network is built. The prediction type
/// comes from the folder's scheduler config; without one, from the latent-diffusion config
/// `NAME.yaml` beside the file ([`detect::sibling_config_prediction`], as A1111), else from
/// [`detect::default_prediction`].
pub fn load_single_file(
    path: &Path,
    config_dir: Option<&Path>,
) -> Result<SdComponents, WeightsError> {
    load_single_file_with(path, config_dir, None)
}

/// [`load_single_file`] with a latent-diffusion `.yaml` config for the file (InvokeAI 2.x's
/// `models.yaml` `config:`), which says the prediction type in place of a `NAME.yaml` beside it
/// (a config folder's scheduler config still comes first).
pub fn load_single_file_with(
    path: &Path,
    config_dir: Option<&Path>,
    ldm_config: Option<&Path>,
) -> Result<SdComponents, WeightsError> {
    let file = Arc::new(Checkpoint::open(path)?);
    let names: Vec<&str> = file.names().collect();
    let map =
        keymap::map_single_file(&names).map_err(|source| WeightsError::NotStableDiffusion {
            path: path.to_path_buf(),
            source,
        })?;
    let unet = Weights::renamed(file.clone(), map.unet);
    let vae = Weights::renamed(file.clone(), map.vae);
    let text_encoder = map
        .text_encoder
        .map(|map| Weights::renamed(file.clone(), map));
    let text_encoder_2 = map
        .text_encoder_2
        .map(|map| Weights::renamed(file.clone(), map));

    // The config folder's scheduler says the prediction type; without one, the file's sibling
    // config or SD's rule does (below).
    let (unet_config, vae_config, text_config, text_config_2, configured) = match config_dir {
        Some(dir) => (
            read_config(&dir.join("unet").join("config.json"))?,
            read_config(&dir.join("vae").join("config.json"))?,
            match text_encoder {
                Some(_) => Some(read_config(&dir.join("text_encoder").join("config.json"))?),
                None => None,
            },
            match text_encoder_2 {
                Some(_) => Some(read_config(
                    &dir.join("text_encoder_2").join("config.json"),
                )?),
                None => None,
            },
            scheduler_prediction(dir)?,
        ),
        None => {
            let text_config = text_encoder
                .as_ref()
                .map(|w| detect::text_encoder_config(w, map.text_encoder_layout))
                .transpose()?;
            let mut vae_config = detect::vae_config(&vae)?;
            let (unet_config, text_config_2) = match &text_encoder_2 {
                Some(w) => {
                    let config = detect::text_encoder_config(w, TextEncoderLayout::OpenClip)?;
                    vae_config.scaling_factor = detect::SDXL_VAE_SCALING_FACTOR;
                    // The refiner, without the first encoder, reads an aesthetic score
                    // instead of the target size.
                    let numbers = match text_encoder {
                        Some(_) => detect::SDXL_TIME_IDS,
                        None => detect::SDXL_REFINER_TIME_IDS,
                    };
                    let unet_config =
                        detect::sdxl_unet_config(&unet, config.projection_dim, numbers)?;
                    (unet_config, Some(config))
                }
                None => (detect::unet_config(&unet)?, None),
            };
            (unet_config, vae_config, text_config, text_config_2, None)
        }
    };
    let prediction = match configured {
        Some(prediction) => prediction,
        None => {
            let from_config = match ldm_config {
                Some(config) => Some(detect::ldm_config_prediction(config)?),
                None => detect::sibling_config_prediction(path)?,
            };
            match from_config {
                Some(prediction) => prediction,
                None => {
                    // SD 2.x's OpenCLIP ViT-H, not the SDXL refiner's OpenCLIP bigG.
                    let open_clip = map.text_encoder_layout == TextEncoderLayout::OpenClip
                        && text_encoder_2.is_none();
                    detect::default_prediction(open_clip, unet_config.in_channels == 9)
                }
            }
        }
    };
    Ok(SdComponents {
        kind: detect::model_kind(&unet_config, prediction),
        unet: Component {
            config: unet_config,
            weights: unet,
        },
        vae: Component {
            config: vae_config,
            weights: vae,
        },
        text_encoder: text_encoder
            .zip(text_config)
            .map(|(weights, config)| Component { config, weights }),
        text_encoder_2: text_encoder_2
            .zip(text_config_2)
            .map(|(weights, config)| Component { config, weights }),
    })
}

/// Loads a diffusers model folder: `unet/`, `vae/`, `text_encoder/` and, for SDXL,
/// `text_encoder_2/`, each with its `config.json` and weights (see [`component_files`]), and
/// `scheduler/scheduler_config.json` for the prediction type.
pub fn load_diffusers_folder(dir: &Path) -> Result<SdComponents, WeightsError> {
    let index = ModelIndex::read(dir)?;
    let unet_dir = dir.join("unet");
    let unet_config: UNetConfig = read_config(&unet_dir.join("config.json"))?;
    let unet = folder_weights(&unet_dir, "diffusion_pytorch_model", |name| {
        Some(name.to_owned())
    })?;
    let text_encoder_2 = if index.names("text_encoder_2") {
        Some(text_encoder_folder(&dir.join("text_encoder_2"))?)
    } else {
        None
    };
    Ok(SdComponents {
        kind: detect::model_kind(&unet_config, read_prediction(dir)?),
        unet: Component {
            config: unet_config,
            weights: unet,
        },
        vae: vae_folder(&dir.join("vae"))?,
        // The SDXL refiner has only the second.
        text_encoder: match index.names("text_encoder") {
            true => Some(text_encoder_folder(&dir.join("text_encoder"))?),
            false => None,
        },
        text_encoder_2,
    })
}

/// A diffusers folder's `model_index.json`: which components the pipeline has.
struct ModelIndex {
    dir: PathBuf,
    entries: Option<BTreeMap<String, serde_json::Value>>,
}

impl ModelIndex {
    fn read(dir: &Path) -> Result<ModelIndex, WeightsError> {
        let path = dir.join("model_index.json");
        let entries = if path.is_file() {
            Some(read_config(&path)?)
        } else {
            None
        };
        Ok(ModelIndex {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    /// Whether the pipeline has `component`: the index names its class (`[library, class]`,
    /// `[null, null]` for an absent one), or, in a folder without an index, its folder exists.
    fn names(&self, component: &str) -> bool {
        match &self.entries {
            Some(index) => index
                .get(component)
                .and_then(|entry| entry.get(1))
                .is_some_and(|class| !class.is_null()),
            None => self.dir.join(component).is_dir(),
        }
    }
}

/// A transformers text-encoder folder (`CLIPTextModel` or `CLIPTextModelWithProjection`). Since
/// transformers 5.6, `CLIPTextModel` is saved without the `text_model.` level that hub files
/// have; the names served are the hub's either way. The `position_ids` buffer is not a weight.
fn text_encoder_folder(dir: &Path) -> Result<Component<ClipTextConfig>, WeightsError> {
    Ok(Component {
        config: read_config(&dir.join("config.json"))?,
        weights: folder_weights(dir, "model", keymap::clip_to_diffusers)?,
    })
}

/// A diffusers `vae/` folder: its `config.json` and weights.
fn vae_folder(dir: &Path) -> Result<Component<VaeConfig>, WeightsError> {
    // Folders written before diffusers 0.14 use the old VAE attention names.
    let weights = folder_weights(dir, "diffusion_pytorch_model", |name| {
        Some(keymap::vae_legacy_to_diffusers(name))
    })?;
    Ok(Component {
        config: read_config(&dir.join("config.json"))?,
        weights,
    })
}

/// Loads a VAE that replaces a model's own (`--vae`): a diffusers `vae/` folder, or a single
/// file as `load_vae_file` reads it.
pub fn load_vae(path: &Path) -> Result<Component<VaeConfig>, WeightsError> {
    if path.is_dir() {
        vae_folder(path)
    } else {
        load_vae_file(path)
    }
}

/// Loads a standalone VAE (a `--vae` override): latent-diffusion names with or without the
/// `first_stage_model.` prefix (A1111's `.vae.pt`/`.vae.safetensors`, the original
/// `vae-ft-mse-840000-ema-pruned.ckpt`), or diffusers names. The config is inferred from the
/// shapes with SD's 32 groups and 0.18215 scaling; a pipeline swapping the VAE of a loaded model
/// can keep that model's `VaeConfig` instead.
pub fn load_vae_file(path: &Path) -> Result<Component<VaeConfig>, WeightsError> {
    let file = Arc::new(Checkpoint::open(path)?);
    let names: Vec<&str> = file.names().collect();
    let map = keymap::map_vae_file(&names).map_err(|source| WeightsError::NotStableDiffusion {
        path: path.to_path_buf(),
        source,
    })?;
    let weights = Weights::renamed(file, map);
    Ok(Component {
        config: detect::vae_config(&weights)?,
        weights,
    })
}

pub(crate) fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T, WeightsError> {
    let text = std::fs::read_to_string(path).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| WeightsError::Config {
        path: path.to_path_buf(),
        source,
    })
}

/// The scheduler config's `prediction_type` (diffusers' default, epsilon, when absent or when
/// the folder has no scheduler config).
fn read_prediction(dir: &Path) -> Result<Prediction, WeightsError> {
    Ok(scheduler_prediction(dir)?.unwrap_or(Prediction::Epsilon))
}

/// The `prediction_type` of the folder's scheduler config (epsilon when the config does not
/// say); `None` when the folder has no scheduler config.
fn scheduler_prediction(dir: &Path) -> Result<Option<Prediction>, WeightsError> {
    #[derive(serde::Deserialize)]
    struct Scheduler {
        #[serde(default)]
        prediction_type: Option<String>,
    }
    let path = dir.join("scheduler").join("scheduler_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let scheduler: Scheduler = read_config(&path)?;
    match scheduler.prediction_type.as_deref() {
        None | Some("epsilon") => Ok(Some(Prediction::Epsilon)),
        Some("v_prediction") => Ok(Some(Prediction::VPrediction)),
        Some(other) => Err(WeightsError::Unsupported {
            path,
            problem: format!("prediction_type {other:?} is not supported"),
        }),
    }
}

/// The weight files of a diffusers component folder, in order of preference: `STEM.safetensors`,
/// the `STEM.fp16.safetensors` variant, a sharded `STEM.safetensors.index.json`, then the
/// pickled `STEM.bin` / `STEM.fp16.bin` (`STEM` = `diffusion_pytorch_model` for diffusers
/// models, `model` for transformers'; transformers' `.bin` is `pytorch_model.bin`).
pub fn component_files(dir: &Path, stem: &str) -> Result<Vec<PathBuf>, WeightsError> {
    let bin_stem = if stem == "model" {
        "pytorch_model"
    } else {
        stem
    };
    let single = [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
    ];
    for name in &single {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(vec![path]);
        }
    }
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if index.is_file() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let index_data: Index = read_config(&index)?;
        let mut shards: Vec<PathBuf> = index_data
            .weight_map
            .values()
            .map(|f| dir.join(f))
            .collect();
        shards.sort();
        shards.dedup();
        return Ok(shards);
    }
    let pickled = [format!("{bin_stem}.bin"), format!("{bin_stem}.fp16.bin")];
    for name in &pickled {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(vec![path]);
        }
    }
    Err(WeightsError::NoWeights {
        dir: dir.to_path_buf(),
        looked_for: single
            .iter()
            .chain([format!("{stem}.safetensors.index.json")].iter())
            .chain(pickled.iter())
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Opens a component folder's weights, serving each stored name under `rename(name)` (`None`
/// leaves the tensor out).
fn folder_weights(
    dir: &Path,
    stem: &str,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<Weights, WeightsError> {
    let mut files = Vec::new();
    let mut map = BTreeMap::new();
    for (index, path) in component_files(dir, stem)?.into_iter().enumerate() {
        let file = Arc::new(Checkpoint::open(&path)?);
        for key in file.names() {
            if let Some(name) = rename(key) {
                map.insert(name, (index, Source::whole(key)));
            }
        }
        files.push(file);
    }
    Ok(Weights::new(files, map))
}
