//! The `invoke>` prompt: prompts with switches, and InvokeAI's `!` commands, line by line,
//! with the model loaded once. A bad line prints an error; the prompt returns.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use dream_core::sampler::INVOKEAI_KARRAS_MAX;
use dream_pipeline::DreamError;
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};

use crate::fetch;
use crate::models::Models;
use crate::render::{Made, Plan};
use crate::switches::{split_command, Switches};

/// The `!` commands, for `!help` and tab completion.
const COMMANDS: &[&str] = &[
    "!fetch",
    "!replay",
    "!history",
    "!search",
    "!clear",
    "!models",
    "!switch",
    "!import_model",
    "!edit_model",
    "!del_model",
    "!fix",
    "!help",
];

/// After a line: go on, or offer a command in the edit line (`!fetch`, `!NNN`), or stop.
#[derive(Debug, PartialEq)]
pub enum Next {
    Continue,
    Edit(String),
    ClearHistory,
    Quit,
}

pub struct Session {
    /// The startup command line's switches: every line's start from these.
    defaults: Switches,
    pub models: Models,
    /// The images of the previous command (`-S -1`, `-I -1`).
    previous: Vec<Made>,
    history: Vec<String>,
    /// Nested `!replay`s, against a file that replays itself.
    replay_depth: usize,
}

impl Session {
    pub fn new(defaults: Switches, models: Models) -> Session {
        Session {
            defaults,
            models,
            previous: Vec::new(),
            history: Vec::new(),
            replay_depth: 0,
        }
    }

    /// Runs a prompt with its switches (`dream PROMPT …` and each `invoke>` line).
    pub fn render(&mut self, prompt: &str, switches: &Switches) -> Result<()> {
        // Everything is checked before a (slow) model load.
        let plan = Plan::new(prompt, switches, &self.previous, self.models.default_size())?;
        let model = self.models.model()?;
        let sha256 = self.models.current_sha256()?;
        let refiner = match &plan.refiner {
            Some(given) => Some(self.models.refiner(given)?),
            None => None,
        };
        let refiner = refiner
            .as_ref()
            .map(|(refiner, title)| (&**refiner, title.as_str()));
        let made = plan.run(&model, sha256.as_deref(), refiner)?;
        self.previous = made;
        Ok(())
    }

    pub fn execute(&mut self, line: &str) -> Result<Next> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(Next::Continue);
        }
        if matches!(line, "q" | "quit" | "exit") {
            return Ok(Next::Quit);
        }
        if matches!(line, "-h" | "--help" | "!help") {
            println!("{}", help());
            return Ok(Next::Continue);
        }
        if let Some(command) = line.strip_prefix('!') {
            return self.command(command);
        }
        self.history.push(line.to_string());
        let (prompt, tokens) = split_command(line)?;
        let mut switches = self.defaults.updated(tokens)?;
        // InvokeAI: --grid at startup holds for every line that does not say -i.
        switches.grid |= self.defaults.grid && !switches.individual;
        self.render(&prompt, &switches)?;
        Ok(Next::Continue)
    }

    fn karras_max(&self) -> usize {
        self.defaults.karras_max.unwrap_or(INVOKEAI_KARRAS_MAX)
    }

    /// A `!` command (without its `!`).
    fn command(&mut self, command: &str) -> Result<Next> {
        let words =
            shlex::split(command).ok_or_else(|| anyhow!("unbalanced quotes in: !{command}"))?;
        let (name, args) = words
            .split_first()
            .ok_or_else(|| anyhow!("a command name must follow !"))?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Ok(n) = name.parse::<usize>() {
            return self
                .history
                .get(n.wrapping_sub(1))
                .map(|line| Next::Edit(line.clone()))
                .ok_or_else(|| anyhow!("!{n}: the history has {} lines", self.history.len()));
        }
        match (name.as_str(), args.as_slice()) {
            ("fetch", [image]) => {
                let command = fetch::command_of(Path::new(image), self.karras_max())?;
                return Ok(Next::Edit(command));
            }
            ("fetch", [pattern, out]) => {
                let n = fetch::write_commands(pattern, Path::new(out), self.karras_max())?;
                println!(">> {n} commands written to {out}");
            }
            ("replay", [file]) => self.replay(Path::new(file))?,
            ("history", []) => {
                for (i, line) in self.history.iter().enumerate() {
                    println!("[{}] {line}", i + 1);
                }
            }
            ("search", [text]) => {
                for (i, line) in self.history.iter().enumerate() {
                    if line.contains(text) {
                        println!("[{}] {line}", i + 1);
                    }
                }
            }
            ("clear", []) => {
                self.history.clear();
                return Ok(Next::ClearHistory);
            }
            ("models", []) => println!("{}", self.models.list()),
            ("switch", [model]) => {
                self.models.switch(model)?;
                println!(">> current model: {model}");
            }
            ("import_model", [path]) | ("import_model", [path, _]) => {
                let name = self.models.import(path, args.get(1).copied())?;
                println!(
                    ">> {name} added to {}",
                    self.models.registry.file().display()
                );
            }
            ("edit_model", [model]) => return Ok(Next::Edit(self.models.edit_command(model)?)),
            ("edit_model", [model, changes @ ..]) => {
                let changes: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                self.models.edit(model, &changes)?;
                println!(">> {model} updated");
            }
            ("del_model", [model]) => {
                self.models.delete(model)?;
                println!(">> {model} deleted");
            }
            ("fix", [file, tokens @ ..]) if is_outcrop(tokens) => self.outcrop(file, tokens)?,
            ("fix", _) => bail!(DreamError::NotSupported(
                "!fix (post-processing: face restoration, upscaling)".into()
            )),
            _ => bail!("{}", usage(name)),
        }
        Ok(Next::Continue)
    }

    /// `!fix IMAGE -c top 64 …`: InvokeAI's outcrop of an image it made, with the image's own
    /// prompt and switches (from its metadata) and the outcrop's strength and seam pass
    /// unless the line says otherwise.
    fn outcrop(&mut self, file: &str, tokens: &[&str]) -> Result<()> {
        let command = fetch::command_of(Path::new(file), self.karras_max())?;
        let (prompt, recorded) = split_command(&command)?;
        let mut switches = self.defaults.updated(recorded)?;
        switches.init_img = Some(file.to_string());
        switches.strength = None;
        // The size is the grown canvas's.
        (switches.width, switches.height) = (None, None);
        let switches = switches.updated(tokens.iter().map(|t| t.to_string()).collect())?;
        self.render(&prompt, &switches)
    }

    /// `!replay FILE`: every line of FILE as if typed; a bad line is reported, the rest run.
    fn replay(&mut self, file: &Path) -> Result<()> {
        anyhow::ensure!(self.replay_depth < 8, "!replay nested too deeply");
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        self.replay_depth += 1;
        let mut failed = 0;
        for line in text.lines() {
            match self.run_line(line) {
                None => failed += 1,
                Some(Next::Quit) => break,
                Some(_) => {}
            }
        }
        self.replay_depth -= 1;
        anyhow::ensure!(failed == 0, "{failed} line(s) of {} failed", file.display());
        Ok(())
    }

    /// Runs `line`, printing what it would put in the edit line, or its error (then `None`).
    fn run_line(&mut self, line: &str) -> Option<Next> {
        match self.execute(line) {
            Ok(Next::Edit(command)) => {
                println!("{command}");
                Some(Next::Continue)
            }
            Ok(next) => Some(next),
            Err(error) => {
                eprintln!("error: {error:#}");
                None
            }
        }
    }

    /// Reads commands from `input` (a file, or standard input when it is not a terminal)
    /// until its end or `q`; what `!fetch` would put in the edit line is printed. Returns
    /// whether every line succeeded.
    pub fn run_lines(&mut self, input: impl BufRead) -> Result<bool> {
        let mut all_ok = true;
        for line in input.lines() {
            let line = line.context("cannot read the commands")?;
            match self.run_line(&line) {
                None => all_ok = false,
                Some(Next::Quit) => break,
                Some(_) => {}
            }
        }
        Ok(all_ok)
    }

    /// The interactive prompt: line editing, history (kept in `history_file`) and completion.
    pub fn run_terminal(&mut self, history_file: Option<PathBuf>) -> Result<()> {
        let mut editor: Editor<LineHelper, DefaultHistory> =
            Editor::new().context("cannot open the terminal")?;
        editor.set_helper(Some(LineHelper::default()));
        if let Some(file) = &history_file {
            // A missing history file is a first session.
            let _ = editor.load_history(file);
            self.history = editor.history().iter().cloned().collect();
        }
        let mut offered: Option<String> = None;
        let mut interrupted = false;
        loop {
            if let Some(helper) = editor.helper_mut() {
                helper.models = self.models.names();
            }
            let read = match offered.take() {
                Some(text) => editor.readline_with_initial("invoke> ", (&text, "")),
                None => editor.readline("invoke> "),
            };
            let line = match read {
                Ok(line) => line,
                // InvokeAI: Ctrl-C at the prompt twice in a row quits.
                Err(ReadlineError::Interrupted) if !interrupted => {
                    eprintln!("(Ctrl-C again, Ctrl-D or q to quit)");
                    interrupted = true;
                    continue;
                }
                Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
                Err(error) => return Err(error.into()),
            };
            interrupted = false;
            if !line.trim().is_empty() {
                let _ = editor.add_history_entry(line.as_str());
            }
            match self.execute(&line) {
                Ok(Next::Continue) => {}
                Ok(Next::Edit(text)) => offered = Some(text),
                Ok(Next::ClearHistory) => {
                    let _ = editor.clear_history();
                }
                Ok(Next::Quit) => break,
                Err(error) => eprintln!("error: {error:#}"),
            }
        }
        if let Some(file) = &history_file {
            editor
                .save_history(file)
                .with_context(|| format!("cannot save the history to {}", file.display()))?;
        }
        Ok(())
    }
}

/// The switches of a line and the `!` commands.
fn help() -> String {
    let switches = <Switches as clap::CommandFactory>::command()
        .override_usage("invoke> PROMPT [switches]")
        .render_help();
    format!(
        "{switches}\nCommands: {} and !N (the Nth history line); q quits.",
        COMMANDS.join(", ")
    )
}

/// The usage of `!name`, or the list of commands for an unknown one.
fn is_outcrop(tokens: &[&str]) -> bool {
    tokens.iter().any(|t| matches!(*t, "-c" | "--outcrop"))
}

fn usage(name: &str) -> String {
    let usage = match name {
        "fetch" => "!fetch IMAGE.png, or !fetch 'DIR/*.png' OUT.txt",
        "replay" => "!replay FILE",
        "history" => "!history",
        "search" => "!search TEXT",
        "clear" => "!clear",
        "models" => "!models",
        "switch" => "!switch MODEL",
        "import_model" => "!import_model PATH [NAME]",
        "edit_model" => "!edit_model MODEL [key=value ...]",
        "del_model" => "!del_model MODEL",
        _ => {
            return format!(
                "unknown command !{name}; the commands are {} and !N (the Nth history line)",
                COMMANDS.join(", ")
            )
        }
    };
    format!("usage: {usage}")
}

/// Tab completion: `!` commands, model names after `!switch` and friends, file names after
/// the switches and commands that take a file.
#[derive(Default)]
struct LineHelper {
    files: FilenameCompleter,
    models: Vec<String>,
}

/// The words after which a file name comes.
const FILE_WORDS: &[&str] = &[
    "-I",
    "--init_img",
    "-M",
    "--init_mask",
    "--init_color",
    "!fetch",
    "!replay",
    "!import_model",
];
const MODEL_WORDS: &[&str] = &["!switch", "!edit_model", "!del_model"];

impl Completer for LineHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &before[start..];
        let previous = before[..start].split_whitespace().last();
        let pairs = |names: Vec<String>| {
            names
                .into_iter()
                .filter(|n| n.starts_with(word))
                .map(|n| Pair {
                    display: n.clone(),
                    replacement: n,
                })
                .collect()
        };
        if start == 0 && word.starts_with('!') {
            let names = COMMANDS.iter().map(|c| c.to_string()).collect();
            return Ok((0, pairs(names)));
        }
        match previous {
            Some(p) if MODEL_WORDS.contains(&p) => Ok((start, pairs(self.models.clone()))),
            Some(p) if FILE_WORDS.contains(&p) => self.files.complete(line, pos, ctx),
            // `-I./img.png`: a file name glued to its switch.
            _ => match ["-I", "-M"].iter().find(|s| word.starts_with(**s)) {
                Some(_) if word.len() > 2 => {
                    let path = &word[2..];
                    let (at, found) = self.files.complete(path, path.len(), ctx)?;
                    Ok((start + 2 + at, found))
                }
                _ => Ok((pos, Vec::new())),
            },
        }
    }
}

impl Hinter for LineHelper {
    type Hint = String;
}
impl Highlighter for LineHelper {}
impl Validator for LineHelper {}
impl Helper for LineHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(helper: &LineHelper, line: &str) -> (usize, Vec<String>) {
        let history = DefaultHistory::new();
        let ctx = rustyline::Context::new(&history);
        let (at, pairs) = helper.complete(line, line.len(), &ctx).unwrap();
        (at, pairs.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn tab_completes_commands_models_and_files() {
        let helper = LineHelper {
            models: vec!["sd15".into(), "sd15-inpainting".into(), "anything".into()],
            ..LineHelper::default()
        };
        assert_eq!(
            complete(&helper, "!im"),
            (0, vec!["!import_model".to_string()])
        );
        assert_eq!(
            complete(&helper, "!switch sd"),
            (8, vec!["sd15".to_string(), "sd15-inpainting".to_string()])
        );
        // A file name after -I (and glued to it), nothing after other switches.
        let dir = std::env::temp_dir().join(format!("dream-complete-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("init_image.png"), "").unwrap();
        let prefix = format!("{}/init_", dir.display());
        let expected = format!("{}/init_image.png", dir.display());
        let (_, found) = complete(&helper, &format!("a cat -I {prefix}"));
        assert_eq!(found, std::slice::from_ref(&expected));
        let (at, found) = complete(&helper, &format!("a cat -I{prefix}"));
        assert_eq!((at, found), ("a cat -I".len(), vec![expected]));
        assert_eq!(complete(&helper, "a cat -s 2").1, Vec::<String>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
