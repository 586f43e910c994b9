//! A pickle reader that never runs anything.
//!
//! PyTorch `.ckpt`/`.pt`/`.bin` files are zip archives whose `data.pkl` is a Python pickle: a
//! small stack-machine program. Python's unpickler imports every `GLOBAL` it names and calls it,
//! so a checkpoint can run `os.system`. This module interprets the program symbolically instead:
//! globals become [`Value::Global`] names, calls become [`Value::Call`] records, and nothing is
//! imported or called. On top of that it refuses every global outside [`ALLOWED_GLOBALS`], the
//! handful that plain tensor checkpoints use, so a hostile file is reported as such instead of
//! being quietly half-read.
//!
//! Every pickle protocol (0 to 5) is understood. Out-of-band buffers (protocol 5) and the
//! `copyreg` extension registry (`EXT1/2/4`) name no callable in the stream, so they are refused.
//! Memory and nesting are bounded ([`MAX_NODES`], [`MAX_DEPTH`]), so hostile input can exhaust
//! neither.

use std::collections::HashMap;

/// The `module.name` globals a tensor checkpoint may reference; the same list as AUTOMATIC1111's
/// `modules/safe.py`, which the SD community has relied on since 2022, minus what it allows
/// only for non-tensor payloads we would never read (`torch._utils._rebuild_device_tensor_from_numpy`,
/// `torch.nn.modules.container.ParameterDict`).
///
/// Original CompVis/RunwayML training checkpoints (sd-v1-4.ckpt, v1-5-pruned.ckpt) also store
/// their PyTorch Lightning callback state: a `ModelCheckpoint` object whose best score is a numpy
/// scalar (`numpy.core.multiarray.scalar`, `numpy.dtype`, `_codecs.encode` for its bytes).
/// Because nothing here is ever called, allowing those names costs no safety, and refusing them
/// would refuse the most common SD 1.x files.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
    ("torch", "float16"),
    ("torch", "float32"),
    ("torch", "bfloat16"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("_codecs", "encode"),
    (
        "pytorch_lightning.callbacks.model_checkpoint",
        "ModelCheckpoint",
    ),
    ("__builtin__", "set"),
    ("builtins", "set"),
];

/// Upper bound on the number of values a pickle may build, counting every copy made by memo
/// lookups. Real checkpoints, optimizer state included, stay below a million; a "billion laughs"
/// pickle that doubles a value with each memo lookup hits the bound after a few dozen opcodes.
pub const MAX_NODES: usize = 1 << 24;

/// Upper bound on the nesting of containers; a state dict is 4 or 5 levels deep. Deeper trees
/// are refused rather than risking stack exhaustion when they are walked or dropped.
pub const MAX_DEPTH: usize = 256;

/// What a pickle builds, as data: no Python object is ever created.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// Integers that fit in 64 bits; larger ones (`LONG` opcodes) are refused.
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered key/value pairs, as `dict` and `OrderedDict` keep them.
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// A module attribute that passed the allow-list; nothing was imported.
    Global {
        module: String,
        name: String,
    },
    /// `callable(*args)` as `REDUCE`, `NEWOBJ`, `INST` and `OBJ` express it, never performed.
    Call {
        callable: Box<Value>,
        args: Vec<Value>,
    },
    /// `BUILD`: state applied to an object (`__setstate__`), recorded.
    Build {
        object: Box<Value>,
        state: Box<Value>,
    },
    /// `PERSID`/`BINPERSID`: a reference the file resolves outside the pickle; in PyTorch
    /// archives the tuple `('storage', StorageType, key, location, numel)`.
    PersistentId(Box<Value>),
}

impl Value {
    /// The entries of a `dict`, or of an `OrderedDict()` filled by `SETITEMS`.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_tuple(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(items) | Value::List(items) => Some(items),
            _ => None,
        }
    }

    /// The entry of a dict whose key is the string `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error("refusing to load: the pickle calls {module}.{name}, which plain tensor checkpoints never use (a malicious or non-weights file)")]
    Forbidden { module: String, name: String },
    #[error("refusing to load: the pickle uses extension-registry code {code}, which could name any callable")]
    Extension { code: u32 },
    #[error("refusing to load: the pickle uses out-of-band buffers (protocol 5), which checkpoints never do")]
    OutOfBand,
    #[error("unknown pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnknownOpcode { opcode: u8, offset: usize },
    #[error("malformed pickle at byte {offset}: {what}")]
    Malformed { offset: usize, what: String },
    #[error("the pickle ends before its STOP opcode (truncated file?)")]
    Truncated,
    #[error("the pickle builds more than {MAX_NODES} values or nests deeper than {MAX_DEPTH}; refusing it")]
    TooLarge,
}

/// Interprets the first pickle in `data` up to its `STOP` and returns the value it builds.
/// Bytes after `STOP` are ignored, as Python's `pickle.load` ignores them.
pub fn load(data: &[u8]) -> Result<Value, PickleError> {
    load_prefix(data).map(|(value, _)| value)
}

/// Like [`load`], also returning how many bytes the pickle took, for files that hold several
/// pickles back to back (PyTorch's pre-1.6 format).
pub fn load_prefix(data: &[u8]) -> Result<(Value, usize), PickleError> {
    let mut machine = Machine::new(data);
    let value = machine.run()?;
    Ok((value, machine.pos))
}

/// A stack entry: the value plus the bookkeeping that bounds memory and depth.
#[derive(Clone)]
struct Item {
    value: Value,
    depth: usize,
    nodes: usize,
}

/// The nesting and node count of some values, for the limits.
#[derive(Clone, Copy, Default)]
struct Size {
    depth: usize,
    nodes: usize,
}

impl Size {
    fn of(item: &Item) -> Size {
        Size {
            depth: item.depth,
            nodes: item.nodes,
        }
    }

    fn all(items: &[Item]) -> Size {
        items.iter().map(Size::of).fold(Size::default(), Size::and)
    }

    fn and(self, other: Size) -> Size {
        Size {
            depth: self.depth.max(other.depth),
            nodes: self.nodes + other.nodes,
        }
    }
}

enum Slot {
    Mark,
    Item(Item),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the current opcode started, for error messages.
    op_start: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Item>,
    nodes: usize,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine {
            data,
            pos: 0,
            op_start: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
            nodes: 0,
        }
    }

    fn malformed<T>(&self, what: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError::Malformed {
            offset: self.op_start,
            what: what.into(),
        })
    }

    // ---- reading the byte stream -------------------------------------------------------------

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Truncated)?;
        let bytes = self.data.get(self.pos..end).ok_or(PickleError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le_uint(&mut self, n: usize) -> Result<u64, PickleError> {
        let bytes = self.take(n)?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn length(&mut self, n: usize) -> Result<usize, PickleError> {
        let len = self.le_uint(n)?;
        // Lengths past the end of the data are truncation, caught by `take`; this only avoids
        // a u64 → usize overflow on 32-bit targets.
        usize::try_from(len).map_err(|_| PickleError::Truncated)
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let Some(len) = rest.iter().position(|b| *b == b'\n') else {
            return Err(PickleError::Truncated);
        };
        self.pos += len + 1;
        match std::str::from_utf8(&rest[..len]) {
            Ok(s) => Ok(s.strip_suffix('\r').unwrap_or(s)),
            Err(_) => self.malformed("a text argument is not UTF-8"),
        }
    }

    fn utf8(&self, bytes: &[u8]) -> Result<String, PickleError> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => self.malformed("a string is not valid UTF-8"),
        }
    }

    // ---- the stack ---------------------------------------------------------------------------

    fn count(&mut self, nodes: usize) -> Result<(), PickleError> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_NODES {
            return Err(PickleError::TooLarge);
        }
        Ok(())
    }

    /// Pushes a new value whose children have the given nesting and size (they are already
    /// counted in the budget).
    fn push_node(&mut self, value: Value, below: Size) -> Result<(), PickleError> {
        let depth = 1 + below.depth;
        if depth > MAX_DEPTH {
            return Err(PickleError::TooLarge);
        }
        let nodes = 1 + below.nodes;
        self.count(1)?;
        self.stack.push(Slot::Item(Item {
            value,
            depth,
            nodes,
        }));
        Ok(())
    }

    fn push_leaf(&mut self, value: Value) -> Result<(), PickleError> {
        self.push_node(value, Size::default())
    }

    fn pop(&mut self) -> Result<Item, PickleError> {
        match self.stack.pop() {
            Some(Slot::Item(item)) => Ok(item),
            Some(Slot::Mark) => self.malformed("a MARK where a value was expected"),
            None => self.malformed("pop from an empty stack"),
        }
    }

    fn top(&mut self) -> Result<&mut Item, PickleError> {
        match self.stack.last_mut() {
            Some(Slot::Item(item)) => Ok(item),
            _ => Err(PickleError::Malformed {
                offset: self.op_start,
                what: "no value on the stack".into(),
            }),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>, PickleError> {
        let Some(mark) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            return self.malformed("no MARK on the stack");
        };
        let items = self
            .stack
            .split_off(mark + 1)
            .into_iter()
            .filter_map(|slot| match slot {
                Slot::Item(item) => Some(item),
                Slot::Mark => None,
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    /// Appends children to the container on top of the stack (APPEND(S), SETITEM(S), ADDITEMS).
    fn extend_top(&mut self, children: Vec<Item>) -> Result<(), PickleError> {
        let Size { depth, nodes } = Size::all(&children);
        if depth + 1 > MAX_DEPTH {
            return Err(PickleError::TooLarge);
        }
        let offset = self.op_start;
        let top = self.top()?;
        let mut values = children.into_iter().map(|c| c.value);
        match &mut top.value {
            Value::List(items) | Value::Set(items) => items.extend(values),
            Value::Dict(entries) => {
                if values.len() % 2 != 0 {
                    return Err(PickleError::Malformed {
                        offset,
                        what: "a dict update with an odd number of items".into(),
                    });
                }
                while let (Some(k), Some(v)) = (values.next(), values.next()) {
                    entries.push((k, v));
                }
            }
            _ => {
                return Err(PickleError::Malformed {
                    offset,
                    what: "adding items to a value that is not a list, dict or set".into(),
                })
            }
        }
        top.depth = top.depth.max(depth + 1);
        top.nodes += nodes;
        Ok(())
    }

    // ---- globals and calls -------------------------------------------------------------------

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        if !ALLOWED_GLOBALS.contains(&(module, name)) {
            return Err(PickleError::Forbidden {
                module: module.to_owned(),
                name: name.to_owned(),
            });
        }
        self.push_leaf(Value::Global {
            module: module.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Records `callable(*args)`; the callable must be an allowed global (anything else could
    /// only be callable through a global that was itself refused).
    fn call(
        &mut self,
        callable: Item,
        args: Vec<Value>,
        args_size: Size,
    ) -> Result<(), PickleError> {
        if !matches!(callable.value, Value::Global { .. }) {
            return self.malformed("a call whose callable is not a global");
        }
        let below = args_size.and(Size::of(&callable));
        // `OrderedDict()` is a dict that SETITEMS then fills (every state dict is built so).
        let ordered_dict = Value::Global {
            module: "collections".into(),
            name: "OrderedDict".into(),
        };
        if callable.value == ordered_dict && args.is_empty() {
            return self.push_node(Value::Dict(Vec::new()), below);
        }
        let value = Value::Call {
            callable: Box::new(callable.value),
            args,
        };
        self.push_node(value, below)
    }

    fn args_tuple(&self, item: Item) -> Result<(Vec<Value>, Size), PickleError> {
        let size = Size::of(&item);
        match item.value {
            Value::Tuple(values) => Ok((values, size)),
            _ => self.malformed("call arguments are not a tuple"),
        }
    }

    // ---- memo --------------------------------------------------------------------------------

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let nodes = self.top()?.nodes;
        self.count(nodes)?;
        let item = self.top()?.clone();
        self.memo.insert(key, item);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        // Count before copying: the copy itself is what a hostile pickle would make explode.
        let Some(nodes) = self.memo.get(&key).map(|item| item.nodes) else {
            return self.malformed(format!("memo entry {key} is read before it is written"));
        };
        self.count(nodes)?;
        if let Some(item) = self.memo.get(&key).cloned() {
            self.stack.push(Slot::Item(item));
        }
        Ok(())
    }

    fn decimal_key(&self, text: &str) -> Result<u32, PickleError> {
        text.trim()
            .parse()
            .or_else(|_| self.malformed(format!("bad memo key {text:?}")))
    }

    // ---- the interpreter ---------------------------------------------------------------------

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_start = self.pos;
            let op = self.byte()?;
            match op {
                // PROTO, FRAME: framing only.
                0x80 => {
                    let version = self.byte()?;
                    if version > 5 {
                        return self.malformed(format!("unsupported pickle protocol {version}"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => {
                    let item = self.pop()?;
                    return Ok(item.value);
                }

                // Stack manipulation.
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    if self.stack.pop().is_none() {
                        return self.malformed("POP from an empty stack");
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let nodes = self.top()?.nodes;
                    self.count(nodes)?;
                    let item = self.top()?.clone();
                    self.stack.push(Slot::Item(item));
                }

                // Memo.
                b'p' => {
                    let key = self.line()?;
                    let key = self.decimal_key(key)?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = self.byte()?;
                    self.memo_put(u32::from(key))?;
                }
                b'r' => {
                    let key = self.le_uint(4)? as u32;
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key =
                        u32::try_from(self.memo.len()).or_else(|_| self.malformed("memo full"))?;
                    self.memo_put(key)?;
                }
                b'g' => {
                    let key = self.line()?;
                    let key = self.decimal_key(key)?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    let key = self.byte()?;
                    self.memo_get(u32::from(key))?;
                }
                b'j' => {
                    let key = self.le_uint(4)? as u32;
                    self.memo_get(key)?;
                }

                // Constants.
                b'N' => self.push_leaf(Value::None)?,
                0x88 => self.push_leaf(Value::Bool(true))?,
                0x89 => self.push_leaf(Value::Bool(false))?,
                b'I' => {
                    let text = self.line()?;
                    let value = match text {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        _ => Value::Int(self.parse_int(text)?),
                    };
                    self.push_leaf(value)?;
                }
                b'L' => {
                    let text = self.line()?;
                    let value = self.parse_int(text.strip_suffix('L').unwrap_or(text))?;
                    self.push_leaf(Value::Int(value))?;
                }
                b'J' => {
                    let v = self.le_uint(4)? as u32 as i32;
                    self.push_leaf(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push_leaf(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = self.le_uint(2)?;
                    self.push_leaf(Value::Int(v as i64))?;
                }
                0x8a => {
                    let n = usize::from(self.byte()?);
                    self.long(n)?;
                }
                0x8b => {
                    let n = self.length(4)?;
                    self.long(n)?;
                }
                b'F' => {
                    let text = self.line()?;
                    let v: f64 = text
                        .trim()
                        .parse()
                        .or_else(|_| self.malformed(format!("bad float {text:?}")))?;
                    self.push_leaf(Value::Float(v))?;
                }
                b'G' => {
                    let bytes = self.take(8)?;
                    let mut be = [0u8; 8];
                    be.copy_from_slice(bytes);
                    self.push_leaf(Value::Float(f64::from_be_bytes(be)))?;
                }

                // Strings and bytes.
                b'S' => {
                    let text = self.line()?;
                    let unquoted = unquote_repr(text).ok_or(()).or_else(|_| {
                        self.malformed("a STRING argument that is not a quoted literal")
                    })?;
                    self.push_leaf(Value::Str(unquoted))?;
                }
                b'V' => {
                    let text = self.line()?.to_owned();
                    self.push_leaf(Value::Str(text))?;
                }
                b'X' => {
                    let n = self.length(4)?;
                    self.string(n)?;
                }
                0x8c => {
                    let n = usize::from(self.byte()?);
                    self.string(n)?;
                }
                0x8d => {
                    let n = self.length(8)?;
                    self.string(n)?;
                }
                // BINSTRING/SHORT_BINSTRING are Python 2 byte strings; checkpoints use them for
                // text, so they are read as text when they are valid UTF-8.
                b'T' => {
                    let n = self.length(4)?;
                    self.byte_string(n)?;
                }
                b'U' => {
                    let n = usize::from(self.byte()?);
                    self.byte_string(n)?;
                }
                b'B' => {
                    let n = self.length(4)?;
                    self.bytes(n)?;
                }
                b'C' => {
                    let n = usize::from(self.byte()?);
                    self.bytes(n)?;
                }
                0x8e | 0x96 => {
                    let n = self.length(8)?;
                    self.bytes(n)?;
                }
                0x97 | 0x98 => return Err(PickleError::OutOfBand),

                // Containers.
                b']' => self.push_leaf(Value::List(Vec::new()))?,
                b')' => self.push_leaf(Value::Tuple(Vec::new()))?,
                b'}' => self.push_leaf(Value::Dict(Vec::new()))?,
                0x8f => self.push_leaf(Value::Set(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_container(items, Value::List)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_container(items, Value::Tuple)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_container(items, Value::Set)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_container(items, Value::Tuple)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_leaf(Value::Dict(Vec::new()))?;
                    self.extend_top(items)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_top(vec![item])?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_top(vec![key, value])?;
                }
                b'e' | b'u' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_top(items)?;
                }

                // Globals, calls and objects.
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.value, name.value) {
                        (Value::Str(module), Value::Str(name)) => self.global(&module, &name)?,
                        _ => return self.malformed("STACK_GLOBAL operands are not strings"),
                    }
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                    let class = self.pop()?;
                    let args = self.pop_mark()?;
                    let size = Size::all(&args);
                    self.call(class, args.into_iter().map(|a| a.value).collect(), size)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.malformed("OBJ without a class");
                    }
                    let class = items.remove(0);
                    let size = Size::all(&items);
                    self.call(class, items.into_iter().map(|a| a.value).collect(), size)?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let (args, size) = self.args_tuple(args)?;
                    self.call(callable, args, size)?;
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let (mut args, size) = self.args_tuple(args)?;
                    let size = size.and(Size::of(&kwargs));
                    args.push(kwargs.value);
                    self.call(class, args, size)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let object = self.pop()?;
                    let below = Size::of(&object).and(Size::of(&state));
                    let value = Value::Build {
                        object: Box::new(object.value),
                        state: Box::new(state.value),
                    };
                    self.push_node(value, below)?;
                }
                b'P' => {
                    let id = self.line()?.to_owned();
                    self.push_leaf(Value::PersistentId(Box::new(Value::Str(id))))?;
                }
                b'Q' => {
                    let id = self.pop()?;
                    let below = Size::of(&id);
                    self.push_node(Value::PersistentId(Box::new(id.value)), below)?;
                }
                0x82 => {
                    let code = u32::from(self.byte()?);
                    return Err(PickleError::Extension { code });
                }
                0x83 => {
                    let code = self.le_uint(2)? as u32;
                    return Err(PickleError::Extension { code });
                }
                0x84 => {
                    let code = self.le_uint(4)? as u32;
                    return Err(PickleError::Extension { code });
                }
                opcode => {
                    return Err(PickleError::UnknownOpcode {
                        opcode,
                        offset: self.op_start,
                    })
                }
            }
        }
    }

    fn push_container(
        &mut self,
        items: Vec<Item>,
        make: fn(Vec<Value>) -> Value,
    ) -> Result<(), PickleError> {
        let below = Size::all(&items);
        let value = make(items.into_iter().map(|i| i.value).collect());
        self.push_node(value, below)
    }

    fn parse_int(&self, text: &str) -> Result<i64, PickleError> {
        text.trim()
            .parse()
            .or_else(|_| self.malformed(format!("integer {text:?} does not fit in 64 bits")))
    }

    /// LONG1/LONG4: little-endian two's complement of `n` bytes.
    fn long(&mut self, n: usize) -> Result<(), PickleError> {
        let bytes = self.take(n)?;
        if n > 8 {
            return self.malformed("an integer wider than 64 bits");
        }
        let mut le = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
            [0xffu8; 8]
        } else {
            [0u8; 8]
        };
        le[..n].copy_from_slice(bytes);
        self.push_leaf(Value::Int(i64::from_le_bytes(le)))
    }

    fn string(&mut self, n: usize) -> Result<(), PickleError> {
        let bytes = self.take(n)?;
        let s = self.utf8(bytes)?;
        self.push_leaf(Value::Str(s))
    }

    fn byte_string(&mut self, n: usize) -> Result<(), PickleError> {
        let bytes = self.take(n)?;
        let value = match std::str::from_utf8(bytes) {
            Ok(s) => Value::Str(s.to_owned()),
            Err(_) => Value::Bytes(bytes.to_vec()),
        };
        self.push_leaf(value)
    }

    fn bytes(&mut self, n: usize) -> Result<(), PickleError> {
        let bytes = self.take(n)?.to_vec();
        self.push_leaf(Value::Bytes(bytes))
    }
}

/// The protocol-0 `STRING` argument is a Python repr: `'text'` or `"text"`. Escapes are kept
/// verbatim; the names checkpoints store this way never contain any.
fn unquote_repr(text: &str) -> Option<String> {
    let text = text.trim_end();
    let quote = text.chars().next()?;
    if (quote != '\'' && quote != '"') || text.len() < 2 || !text.ends_with(quote) {
        return None;
    }
    Some(text[1..text.len() - 1].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `data.pkl` of `torch.save({"state_dict": sd, "global_step": 470000}, f)` (torch 2.15,
    /// default protocol 2), where `sd` is an OrderedDict of `w` = zeros(2,3) float16, `b` =
    /// Parameter(zeros(3)) and `v` = `w[1]`, a view into `w`'s storage at offset 3.
    const TORCH_P2: &[u8] = b"\x80\x02\x7d\x71\x00\x28\x58\x0a\x00\x00\x00\x73\x74\x61\x74\x65\x5f\x64\x69\x63\x74\x71\x01\x63\x63\x6f\x6c\x6c\x65\x63\x74\x69\x6f\x6e\x73\x0a\x4f\x72\x64\x65\x72\x65\x64\x44\x69\x63\x74\x0a\x71\x02\x29\x52\x71\x03\x28\x58\x01\x00\x00\x00\x77\x71\x04\x63\x74\x6f\x72\x63\x68\x2e\x5f\x75\x74\x69\x6c\x73\x0a\x5f\x72\x65\x62\x75\x69\x6c\x64\x5f\x74\x65\x6e\x73\x6f\x72\x5f\x76\x32\x0a\x71\x05\x28\x28\x58\x07\x00\x00\x00\x73\x74\x6f\x72\x61\x67\x65\x71\x06\x63\x74\x6f\x72\x63\x68\x0a\x48\x61\x6c\x66\x53\x74\x6f\x72\x61\x67\x65\x0a\x71\x07\x58\x01\x00\x00\x00\x30\x71\x08\x58\x03\x00\x00\x00\x63\x70\x75\x71\x09\x4b\x06\x74\x71\x0a\x51\x4b\x00\x4b\x02\x4b\x03\x86\x71\x0b\x4b\x03\x4b\x01\x86\x71\x0c\x89\x68\x02\x29\x52\x71\x0d\x74\x71\x0e\x52\x71\x0f\x58\x01\x00\x00\x00\x62\x71\x10\x63\x74\x6f\x72\x63\x68\x2e\x5f\x75\x74\x69\x6c\x73\x0a\x5f\x72\x65\x62\x75\x69\x6c\x64\x5f\x70\x61\x72\x61\x6d\x65\x74\x65\x72\x0a\x71\x11\x68\x05\x28\x28\x68\x06\x63\x74\x6f\x72\x63\x68\x0a\x46\x6c\x6f\x61\x74\x53\x74\x6f\x72\x61\x67\x65\x0a\x71\x12\x58\x01\x00\x00\x00\x31\x71\x13\x68\x09\x4b\x03\x74\x71\x14\x51\x4b\x00\x4b\x03\x85\x71\x15\x4b\x01\x85\x71\x16\x89\x68\x02\x29\x52\x71\x17\x74\x71\x18\x52\x71\x19\x88\x68\x02\x29\x52\x71\x1a\x87\x71\x1b\x52\x71\x1c\x58\x01\x00\x00\x00\x76\x71\x1d\x68\x05\x28\x28\x68\x06\x68\x07\x68\x08\x68\x09\x4b\x06\x74\x71\x1e\x51\x4b\x03\x4b\x03\x85\x71\x1f\x4b\x01\x85\x71\x20\x89\x68\x02\x29\x52\x71\x21\x74\x71\x22\x52\x71\x23\x75\x58\x0b\x00\x00\x00\x67\x6c\x6f\x62\x61\x6c\x5f\x73\x74\x65\x70\x71\x24\x4a\xf0\x2b\x07\x00\x75\x2e";

    /// The same object saved with `pickle_protocol=4`: FRAME, SHORT_BINUNICODE, MEMOIZE and
    /// STACK_GLOBAL, whose module string for `_rebuild_parameter` comes from the memo.
    const TORCH_P4: &[u8] = b"\x80\x04\x95\x45\x01\x00\x00\x00\x00\x00\x00\x7d\x94\x28\x8c\x0a\x73\x74\x61\x74\x65\x5f\x64\x69\x63\x74\x94\x8c\x0b\x63\x6f\x6c\x6c\x65\x63\x74\x69\x6f\x6e\x73\x94\x8c\x0b\x4f\x72\x64\x65\x72\x65\x64\x44\x69\x63\x74\x94\x93\x94\x29\x52\x94\x28\x8c\x01\x77\x94\x8c\x0c\x74\x6f\x72\x63\x68\x2e\x5f\x75\x74\x69\x6c\x73\x94\x8c\x12\x5f\x72\x65\x62\x75\x69\x6c\x64\x5f\x74\x65\x6e\x73\x6f\x72\x5f\x76\x32\x94\x93\x94\x28\x28\x8c\x07\x73\x74\x6f\x72\x61\x67\x65\x94\x8c\x05\x74\x6f\x72\x63\x68\x94\x8c\x0b\x48\x61\x6c\x66\x53\x74\x6f\x72\x61\x67\x65\x94\x93\x94\x8c\x01\x30\x94\x8c\x03\x63\x70\x75\x94\x4b\x06\x74\x94\x51\x4b\x00\x4b\x02\x4b\x03\x86\x94\x4b\x03\x4b\x01\x86\x94\x89\x68\x04\x29\x52\x94\x74\x94\x52\x94\x8c\x01\x62\x94\x68\x07\x8c\x12\x5f\x72\x65\x62\x75\x69\x6c\x64\x5f\x70\x61\x72\x61\x6d\x65\x74\x65\x72\x94\x93\x94\x68\x09\x28\x28\x68\x0a\x68\x0b\x8c\x0c\x46\x6c\x6f\x61\x74\x53\x74\x6f\x72\x61\x67\x65\x94\x93\x94\x8c\x01\x31\x94\x68\x0f\x4b\x03\x74\x94\x51\x4b\x00\x4b\x03\x85\x94\x4b\x01\x85\x94\x89\x68\x04\x29\x52\x94\x74\x94\x52\x94\x88\x68\x04\x29\x52\x94\x87\x94\x52\x94\x8c\x01\x76\x94\x68\x09\x28\x28\x68\x0a\x68\x0d\x68\x0e\x68\x0f\x4b\x06\x74\x94\x51\x4b\x03\x4b\x03\x85\x94\x4b\x01\x85\x94\x89\x68\x04\x29\x52\x94\x74\x94\x52\x94\x75\x8c\x0b\x67\x6c\x6f\x62\x61\x6c\x5f\x73\x74\x65\x70\x94\x4a\xf0\x2b\x07\x00\x75\x2e";

    /// `pickle.dumps({"x": Evil()}, protocol=P)` where `Evil.__reduce__` returns
    /// `(os.system, ("echo pwned",))`; CPython names it by its defining module, `posix`.
    const EVIL_P0: &[u8] = b"\x28\x64\x70\x30\x0a\x56\x78\x0a\x70\x31\x0a\x63\x70\x6f\x73\x69\x78\x0a\x73\x79\x73\x74\x65\x6d\x0a\x70\x32\x0a\x28\x56\x65\x63\x68\x6f\x20\x70\x77\x6e\x65\x64\x0a\x70\x33\x0a\x74\x70\x34\x0a\x52\x70\x35\x0a\x73\x2e";
    const EVIL_P2: &[u8] = b"\x80\x02\x7d\x71\x00\x58\x01\x00\x00\x00\x78\x71\x01\x63\x70\x6f\x73\x69\x78\x0a\x73\x79\x73\x74\x65\x6d\x0a\x71\x02\x58\x0a\x00\x00\x00\x65\x63\x68\x6f\x20\x70\x77\x6e\x65\x64\x71\x03\x85\x71\x04\x52\x71\x05\x73\x2e";
    const EVIL_P4: &[u8] = b"\x80\x04\x95\x2c\x00\x00\x00\x00\x00\x00\x00\x7d\x94\x8c\x01\x78\x94\x8c\x05\x70\x6f\x73\x69\x78\x94\x8c\x06\x73\x79\x73\x74\x65\x6d\x94\x93\x94\x8c\x0a\x65\x63\x68\x6f\x20\x70\x77\x6e\x65\x64\x94\x85\x94\x52\x94\x73\x2e";
    const EVIL_P5: &[u8] = b"\x80\x05\x95\x2c\x00\x00\x00\x00\x00\x00\x00\x7d\x94\x8c\x01\x78\x94\x8c\x05\x70\x6f\x73\x69\x78\x94\x8c\x06\x73\x79\x73\x74\x65\x6d\x94\x93\x94\x8c\x0a\x65\x63\x68\x6f\x20\x70\x77\x6e\x65\x64\x94\x85\x94\x52\x94\x73\x2e";

    fn global(module: &str, name: &str) -> Value {
        Value::Global {
            module: module.into(),
            name: name.into(),
        }
    }

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    fn tuple(items: &[i64]) -> Value {
        Value::Tuple(items.iter().map(|i| Value::Int(*i)).collect())
    }

    fn rebuild_tensor(
        storage: &str,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Value {
        let hooks = Value::Dict(vec![]);
        Value::Call {
            callable: Box::new(global("torch._utils", "_rebuild_tensor_v2")),
            args: vec![
                Value::PersistentId(Box::new(Value::Tuple(vec![
                    s("storage"),
                    global("torch", storage),
                    s(key),
                    s("cpu"),
                    Value::Int(numel),
                ]))),
                Value::Int(offset),
                tuple(size),
                tuple(stride),
                Value::Bool(false),
                hooks,
            ],
        }
    }

    #[test]
    fn reads_a_torch_state_dict_in_protocols_2_and_4() {
        let hooks = Value::Dict(vec![]);
        let parameter = Value::Call {
            callable: Box::new(global("torch._utils", "_rebuild_parameter")),
            args: vec![
                rebuild_tensor("FloatStorage", "1", 3, 0, &[3], &[1]),
                Value::Bool(true),
                hooks,
            ],
        };
        let expected = Value::Dict(vec![
            (
                s("state_dict"),
                Value::Dict(vec![
                    (
                        s("w"),
                        rebuild_tensor("HalfStorage", "0", 6, 0, &[2, 3], &[3, 1]),
                    ),
                    (s("b"), parameter),
                    (s("v"), rebuild_tensor("HalfStorage", "0", 6, 3, &[3], &[1])),
                ]),
            ),
            (s("global_step"), Value::Int(470000)),
        ]);
        assert_eq!(load(TORCH_P2).unwrap(), expected);
        assert_eq!(load(TORCH_P4).unwrap(), expected);
    }

    #[test]
    fn refuses_os_system_in_every_protocol() {
        for (protocol, pickle) in [(0, EVIL_P0), (2, EVIL_P2), (4, EVIL_P4), (5, EVIL_P5)] {
            let err = load(pickle).unwrap_err();
            assert_eq!(
                err,
                PickleError::Forbidden {
                    module: "posix".into(),
                    name: "system".into()
                },
                "protocol {protocol}"
            );
            assert!(err
                .to_string()
                .starts_with("refusing to load: the pickle calls posix.system"));
        }
        // The classic hand-written exploit names the module `os`; INST (protocol 0) names its
        // class inline.
        let err = load(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idq\x01\x85R.").unwrap_err();
        assert!(err.to_string().contains("calls os.system"), "{err}");
        let err = load(b"(S'echo pwned'\nios\nsystem\n.").unwrap_err();
        assert!(err.to_string().contains("calls os.system"), "{err}");
    }

    #[test]
    fn stack_global_is_checked_with_strings_from_the_memo() {
        // "torch" is memoized while building the allowed torch.FloatStorage, then fetched back
        // to build torch.load.
        let pickle = b"\x80\x04\x8c\x05torch\x94\x8c\x0cFloatStorage\x93\x94h\x00\x8c\x04load\x93.";
        let err = load(pickle).unwrap_err();
        assert!(err.to_string().contains("calls torch.load"), "{err}");
    }

    #[test]
    fn refuses_what_names_no_callable() {
        assert_eq!(
            load(b"\x80\x02\x82\x01.").unwrap_err(),
            PickleError::Extension { code: 1 }
        );
        assert_eq!(load(b"\x80\x05\x97.").unwrap_err(), PickleError::OutOfBand);
        assert_eq!(
            load(b"\x80\x02N\xff.").unwrap_err(),
            PickleError::UnknownOpcode {
                opcode: 0xff,
                offset: 3
            }
        );
        // Calling something that is not a global (here a string) has no legitimate use.
        assert!(matches!(
            load(b"X\x01\x00\x00\x00a)R.").unwrap_err(),
            PickleError::Malformed { .. }
        ));
    }

    #[test]
    fn truncation_is_reported() {
        for cut in [1, 10, 100, TORCH_P2.len() - 1] {
            assert!(load(&TORCH_P2[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            load(&TORCH_P2[..TORCH_P2.len() - 1]).unwrap_err(),
            PickleError::Truncated
        );
        // A length prefix far past the end must not allocate.
        assert_eq!(
            load(b"X\xff\xff\xff\xff").unwrap_err(),
            PickleError::Truncated
        );
        assert_eq!(
            load(b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff").unwrap_err(),
            PickleError::Truncated
        );
    }

    #[test]
    fn exponential_copies_and_deep_nesting_are_bounded() {
        // Each round doubles the list through the memo: 2^64 nodes if unchecked.
        let mut laughs = b"\x80\x02]q\x00".to_vec();
        for _ in 0..64 {
            laughs.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        laughs.push(b'.');
        assert_eq!(load(&laughs).unwrap_err(), PickleError::TooLarge);

        let mut deep = b"N".to_vec();
        deep.extend(std::iter::repeat_n(0x85, 100_000));
        deep.push(b'.');
        assert_eq!(load(&deep).unwrap_err(), PickleError::TooLarge);
    }

    #[test]
    fn protocol_0_text_opcodes() {
        let value = load(b"(dp0\nS'a'\np1\nI42\nsS'b'\nF0.5\nsVc\nL7L\nsg1\nI01\ns.").unwrap();
        let expected = vec![
            (s("a"), Value::Int(42)),
            (s("b"), Value::Float(0.5)),
            (s("c"), Value::Int(7)),
            (s("a"), Value::Bool(true)),
        ];
        assert_eq!(value, Value::Dict(expected));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = load(&data);
        }

        #[test]
        fn corrupted_checkpoints_never_panic(
            edits in proptest::collection::vec((0..TORCH_P2.len(), proptest::prelude::any::<u8>()), 1..8),
            cut in 0..=TORCH_P2.len(),
        ) {
            let mut data = TORCH_P2.to_vec();
            for (at, byte) in edits {
                data[at] = byte;
            }
            data.truncate(cut);
            let _ = load(&data);
        }
    }
}
