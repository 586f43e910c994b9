//! Sampler and schedule names. Users know samplers by the names their tools taught them:
//! InvokeAI 2.x (`k_dpmpp_2`), A1111 (`DPM++ 2M Karras`) and ComfyUI (`dpmpp_2m` + `karras`).
//! The tables here map every accepted spelling onto one [`Sampler`] and, where the name says so,
//! one [`ScheduleKind`]; they also give back the names each tool writes into image metadata.
//!
//! Sampler and schedule are separate choices. Where the user names no schedule, the tool whose
//! name they used decides (see [`SamplerChoice::schedule_for`]): InvokeAI switches its `k_*`
//! samplers between Karras and the model's schedule by step count, A1111 has a default per
//! sampler, ComfyUI's default is "normal".

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sampler {
    /// k-diffusion `sample_euler`.
    Euler,
    /// k-diffusion `sample_euler_ancestral`.
    EulerAncestral,
    /// k-diffusion `sample_heun` (second order, two model calls per step).
    Heun,
    /// k-diffusion `sample_dpm_2`.
    Dpm2,
    /// k-diffusion `sample_dpm_2_ancestral`.
    Dpm2Ancestral,
    /// k-diffusion `sample_lms` (linear multistep, order 4).
    Lms,
    /// k-diffusion `sample_dpmpp_2m` (DPM-Solver++(2M)).
    DpmPp2M,
    /// k-diffusion `sample_dpmpp_2s_ancestral` (DPM-Solver++(2S), ancestral).
    DpmPp2SAncestral,
    /// k-diffusion `sample_dpmpp_sde` (DPM-Solver++ stochastic, Brownian noise).
    DpmPpSde,
    /// k-diffusion `sample_dpmpp_2m_sde` (Brownian noise).
    DpmPp2MSde,
    /// k-diffusion `sample_dpmpp_3m_sde` (Brownian noise).
    DpmPp3MSde,
    /// DDIM with η = 0 (deterministic), on the model's discrete timesteps.
    Ddim,
    /// PLMS (diffusers' PNDM scheduler with `skip_prk_steps`), on discrete timesteps.
    Plms,
    /// UniPC (diffusers' UniPCMultistepScheduler), on discrete timesteps.
    UniPc,
    /// Latent consistency model sampling (diffusers' LCMScheduler); needs an LCM model or LoRA.
    Lcm,
    /// Ancestral DDPM (diffusers' DDPMScheduler), on discrete timesteps.
    Ddpm,
}

/// Which noise levels a sampler visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// The model's own discrete schedule: training timesteps evenly spaced from the last down to
    /// 0, each mapped to its σ (k-diffusion `DiscreteSchedule.get_sigmas`; A1111 "Automatic" for
    /// most samplers, "Uniform" and "Normal"; ComfyUI "normal").
    Normal,
    /// Karras et al. (2022) eq. 5 with ρ = 7 over the model's σ range.
    Karras,
    /// σ evenly spaced in log space over the model's σ range.
    Exponential,
    /// k-diffusion `get_sigmas_polyexponential` with ρ = 1 (A1111's default ρ).
    PolyExponential,
    /// Like `Normal` but with `steps + 1` points of which the last (timestep 0) is dropped
    /// (SGM/SDXL's discretization).
    SgmUniform,
    /// Every `(train / steps)`-th training σ, counted down from the last (ComfyUI "simple").
    Simple,
    /// Every `train / steps`-th training σ, counted up from timestep 1 (ComfyUI "ddim_uniform",
    /// A1111 "DDIM").
    DdimUniform,
    /// Training timesteps at the quantiles of a Beta(0.6, 0.6) distribution, rounded
    /// (ComfyUI "beta", from "Beta Sampling is All You Need", Lee et al. 2024).
    Beta,
    /// A1111's "Beta": σ itself at the Beta(0.6, 0.6) quantiles between σ_min and σ_max, not
    /// rounded to training timesteps (differs from ComfyUI's "beta").
    A1111Beta,
}

/// Whose conventions a name came from. It decides the schedule when the user names none and
/// which img2img strength rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameStyle {
    /// InvokeAI 2.x names (`k_euler_a`) and Dream's names in the same style (`k_dpmpp_sde`).
    InvokeAi,
    /// A1111 labels (`Euler a`, `DPM++ 2M Karras`) and A1111's aliases (`k_dpmpp_2m`).
    A1111,
    /// ComfyUI sampler names (`euler_ancestral`).
    ComfyUi,
}

/// A sampler as the user chose it: the sampler, the schedule if the name or a separate option
/// fixed one, and whose naming conventions were used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SamplerChoice {
    pub sampler: Sampler,
    /// `None`: the style's default (see [`SamplerChoice::schedule_for`]).
    pub schedule: Option<ScheduleKind>,
    pub style: NameStyle,
}

/// InvokeAI's `--karras_max` default (`STEP_THRESHOLD` in InvokeAI 2.x's
/// `ldm/models/diffusion/ksampler.py`).
pub const INVOKEAI_KARRAS_MAX: usize = 30;

/// One row per sampler: (sampler, InvokeAI-style name, A1111 label, ComfyUI name).
///
/// InvokeAI 2.x knows only `ddim plms k_lms k_euler k_euler_a k_heun k_dpm_2 k_dpm_2_a k_dpmpp_2
/// k_dpmpp_2_a`; the others get Dream names in its style. A1111 has no DDPM, ComfyUI no PLMS.
const SAMPLERS: &[(Sampler, &str, &str, Option<&str>)] = &[
    (Sampler::Euler, "k_euler", "Euler", Some("euler")),
    (
        Sampler::EulerAncestral,
        "k_euler_a",
        "Euler a",
        Some("euler_ancestral"),
    ),
    (Sampler::Heun, "k_heun", "Heun", Some("heun")),
    (Sampler::Dpm2, "k_dpm_2", "DPM2", Some("dpm_2")),
    (
        Sampler::Dpm2Ancestral,
        "k_dpm_2_a",
        "DPM2 a",
        Some("dpm_2_ancestral"),
    ),
    (Sampler::Lms, "k_lms", "LMS", Some("lms")),
    // InvokeAI 2.x: k_dpmpp_2 runs `sample_dpmpp_2m`, k_dpmpp_2_a `sample_dpmpp_2s_ancestral`.
    (Sampler::DpmPp2M, "k_dpmpp_2", "DPM++ 2M", Some("dpmpp_2m")),
    (
        Sampler::DpmPp2SAncestral,
        "k_dpmpp_2_a",
        "DPM++ 2S a",
        Some("dpmpp_2s_ancestral"),
    ),
    (
        Sampler::DpmPpSde,
        "k_dpmpp_sde",
        "DPM++ SDE",
        Some("dpmpp_sde"),
    ),
    (
        Sampler::DpmPp2MSde,
        "k_dpmpp_2m_sde",
        "DPM++ 2M SDE",
        Some("dpmpp_2m_sde"),
    ),
    (
        Sampler::DpmPp3MSde,
        "k_dpmpp_3m_sde",
        "DPM++ 3M SDE",
        Some("dpmpp_3m_sde"),
    ),
    (Sampler::Ddim, "ddim", "DDIM", Some("ddim")),
    (Sampler::Plms, "plms", "PLMS", None),
    (Sampler::UniPc, "unipc", "UniPC", Some("uni_pc")),
    (Sampler::Lcm, "lcm", "LCM", Some("lcm")),
    (Sampler::Ddpm, "ddpm", "DDPM", Some("ddpm")),
];

/// A1111's aliases (`SamplerData.aliases` in `modules/sd_samplers_*.py`); the `_ka` ones are
/// the old combined "… Karras" samplers.
const A1111_ALIASES: &[(&str, Sampler, Option<ScheduleKind>)] = &[
    ("k_euler_ancestral", Sampler::EulerAncestral, None),
    ("k_dpmpp_2s_a", Sampler::DpmPp2SAncestral, None),
    ("k_dpmpp_2m", Sampler::DpmPp2M, None),
    ("k_lcm", Sampler::Lcm, None),
    ("k_lms_ka", Sampler::Lms, Some(ScheduleKind::Karras)),
    ("k_dpm_2_ka", Sampler::Dpm2, Some(ScheduleKind::Karras)),
    (
        "k_dpm_2_a_ka",
        Sampler::Dpm2Ancestral,
        Some(ScheduleKind::Karras),
    ),
    (
        "k_dpmpp_2s_a_ka",
        Sampler::DpmPp2SAncestral,
        Some(ScheduleKind::Karras),
    ),
    (
        "k_dpmpp_2m_ka",
        Sampler::DpmPp2M,
        Some(ScheduleKind::Karras),
    ),
    (
        "k_dpmpp_sde_ka",
        Sampler::DpmPpSde,
        Some(ScheduleKind::Karras),
    ),
    (
        "k_dpmpp_2m_sde_ka",
        Sampler::DpmPp2MSde,
        Some(ScheduleKind::Karras),
    ),
    (
        "k_dpmpp_3m_sde_ka",
        Sampler::DpmPp3MSde,
        Some(ScheduleKind::Karras),
    ),
    (
        "k_dpmpp_3m_sde_exp",
        Sampler::DpmPp3MSde,
        Some(ScheduleKind::Exponential),
    ),
];

/// One row per schedule: (schedule, A1111 "Schedule type" label, ComfyUI scheduler name).
/// A1111's `Uniform` and `Normal` both compute the model's discrete schedule, identically.
const SCHEDULES: &[(ScheduleKind, &str, Option<&str>)] = &[
    (ScheduleKind::Normal, "Uniform", Some("normal")),
    (ScheduleKind::Karras, "Karras", Some("karras")),
    (
        ScheduleKind::Exponential,
        "Exponential",
        Some("exponential"),
    ),
    (ScheduleKind::PolyExponential, "Polyexponential", None),
    (ScheduleKind::SgmUniform, "SGM Uniform", Some("sgm_uniform")),
    (ScheduleKind::Simple, "Simple", Some("simple")),
    (ScheduleKind::DdimUniform, "DDIM", Some("ddim_uniform")),
    (ScheduleKind::Beta, "Beta (ComfyUI)", Some("beta")),
    (ScheduleKind::A1111Beta, "Beta", None),
];

/// Further A1111 schedule labels and aliases (`modules/sd_schedulers.py`).
const SCHEDULE_ALIASES: &[(&str, ScheduleKind)] = &[
    ("Normal", ScheduleKind::Normal),
    ("SGMUniform", ScheduleKind::SgmUniform),
];

/// The A1111 label that means "the sampler's default schedule".
const AUTOMATIC: &str = "Automatic";

impl Sampler {
    pub const ALL: [Sampler; 16] = [
        Sampler::Euler,
        Sampler::EulerAncestral,
        Sampler::Heun,
        Sampler::Dpm2,
        Sampler::Dpm2Ancestral,
        Sampler::Lms,
        Sampler::DpmPp2M,
        Sampler::DpmPp2SAncestral,
        Sampler::DpmPpSde,
        Sampler::DpmPp2MSde,
        Sampler::DpmPp3MSde,
        Sampler::Ddim,
        Sampler::Plms,
        Sampler::UniPc,
        Sampler::Lcm,
        Sampler::Ddpm,
    ];

    fn row(self) -> &'static (Sampler, &'static str, &'static str, Option<&'static str>) {
        SAMPLERS
            .iter()
            .find(|row| row.0 == self)
            .expect("every sampler has a row in SAMPLERS")
    }

    /// The name InvokeAI's `-A` switch uses, e.g. `k_dpmpp_2`; for samplers InvokeAI 2.x lacks,
    /// Dream's name in the same style (`k_dpmpp_sde`, `unipc`, `lcm`, `ddpm`).
    pub fn invokeai_name(self) -> &'static str {
        self.row().1
    }

    /// The label A1111 shows and writes as `Sampler:` in its metadata, e.g. `DPM++ 2M`
    /// (A1111 has no DDPM; Dream writes `DDPM`).
    pub fn a1111_name(self) -> &'static str {
        self.row().2
    }

    /// ComfyUI's `sampler_name`, if ComfyUI has this sampler.
    pub fn comfyui_name(self) -> Option<&'static str> {
        self.row().3
    }

    /// Walks a σ schedule with k-diffusion's sampling functions (the others step through
    /// discrete timesteps with a diffusers scheduler).
    pub fn is_k_diffusion(self) -> bool {
        !matches!(
            self,
            Sampler::Ddim | Sampler::Plms | Sampler::UniPc | Sampler::Lcm | Sampler::Ddpm
        )
    }

    /// Ancestral samplers step below the next σ and add fresh noise back up to it.
    pub fn is_ancestral(self) -> bool {
        matches!(
            self,
            Sampler::EulerAncestral | Sampler::Dpm2Ancestral | Sampler::DpmPp2SAncestral
        )
    }

    /// SDE samplers draw their noise from a Brownian tree (k-diffusion `BrownianTreeNoiseSampler`).
    pub fn is_sde(self) -> bool {
        matches!(
            self,
            Sampler::DpmPpSde | Sampler::DpmPp2MSde | Sampler::DpmPp3MSde
        )
    }

    /// Has an η: how much fresh noise a step adds (the ancestral and SDE samplers, DDIM).
    pub fn takes_eta(self) -> bool {
        self.is_ancestral() || self.is_sde() || self == Sampler::Ddim
    }

    /// The η used when none is given: 0 for DDIM (deterministic), 1 for the others.
    pub fn default_eta(self) -> f64 {
        match self {
            Sampler::Ddim => 0.0,
            _ => 1.0,
        }
    }

    /// Draws random noise during sampling, not only at the start: the result depends on the
    /// noise source as well as the seed's initial noise.
    pub fn needs_noise(self) -> bool {
        self.is_ancestral() || self.is_sde() || matches!(self, Sampler::Lcm | Sampler::Ddpm)
    }

    /// A1111 asks these samplers for `steps + 1` sigmas and drops the next-to-last one
    /// (`discard_next_to_last_sigma` in `modules/sd_samplers_kdiffusion.py`), so that their
    /// last step is not a wasted second-order step down to a tiny σ.
    pub fn a1111_discards_next_to_last_sigma(self) -> bool {
        matches!(
            self,
            Sampler::Dpm2 | Sampler::Dpm2Ancestral | Sampler::DpmPp3MSde
        )
    }

    /// The schedule A1111 uses when its "Schedule type" is Automatic (the `scheduler` option
    /// of each sampler in `modules/sd_samplers_kdiffusion.py`; without one, the model's own).
    pub fn a1111_default_schedule(self) -> ScheduleKind {
        match self {
            Sampler::DpmPp2M
            | Sampler::DpmPpSde
            | Sampler::DpmPp2SAncestral
            | Sampler::Dpm2
            | Sampler::Dpm2Ancestral => ScheduleKind::Karras,
            Sampler::DpmPp2MSde | Sampler::DpmPp3MSde => ScheduleKind::Exponential,
            _ => ScheduleKind::Normal,
        }
    }
}

/// InvokeAI 2.x's rule for its `k_*` samplers: Karras sigmas below `karras_max` steps, the
/// model's schedule from there on (`if ddim_num_steps >= self.karras_max: model_sigmas`).
/// Samplers outside k-diffusion always use the model's schedule.
pub fn invokeai_schedule(sampler: Sampler, steps: usize, karras_max: usize) -> ScheduleKind {
    if sampler.is_k_diffusion() && steps < karras_max {
        ScheduleKind::Karras
    } else {
        ScheduleKind::Normal
    }
}

impl ScheduleKind {
    pub const ALL: [ScheduleKind; 9] = [
        ScheduleKind::Normal,
        ScheduleKind::Karras,
        ScheduleKind::Exponential,
        ScheduleKind::PolyExponential,
        ScheduleKind::SgmUniform,
        ScheduleKind::Simple,
        ScheduleKind::DdimUniform,
        ScheduleKind::Beta,
        ScheduleKind::A1111Beta,
    ];

    fn row(self) -> &'static (ScheduleKind, &'static str, Option<&'static str>) {
        SCHEDULES
            .iter()
            .find(|row| row.0 == self)
            .expect("every schedule has a row in SCHEDULES")
    }

    /// The label A1111 writes as `Schedule type:` (`Uniform` for the model's own schedule;
    /// ComfyUI's beta, which A1111 lacks, is `Beta (ComfyUI)`).
    pub fn a1111_name(self) -> &'static str {
        self.row().1
    }

    /// ComfyUI's `scheduler` name, if ComfyUI has this schedule.
    pub fn comfyui_name(self) -> Option<&'static str> {
        self.row().2
    }

    /// The name Dream prints: ComfyUI's where it has one, else A1111's in lower case.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::PolyExponential => "polyexponential",
            ScheduleKind::A1111Beta => "a1111_beta",
            _ => self
                .comfyui_name()
                .expect("schedules without a ComfyUI name are listed"),
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.invokeai_name())
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl SamplerChoice {
    /// The sampler with its style's default schedule.
    pub fn new(sampler: Sampler, style: NameStyle) -> Self {
        Self {
            sampler,
            schedule: None,
            style,
        }
    }

    /// The schedule to run `steps` steps with: the one the user named, else the default of the
    /// tool whose name they used. `karras_max` is InvokeAI's `--karras_max`
    /// ([`INVOKEAI_KARRAS_MAX`] unless the user set it).
    pub fn schedule_for(&self, steps: usize, karras_max: usize) -> ScheduleKind {
        match (self.schedule, self.style) {
            (Some(schedule), _) => schedule,
            (None, NameStyle::InvokeAi) => invokeai_schedule(self.sampler, steps, karras_max),
            (None, NameStyle::A1111) => self.sampler.a1111_default_schedule(),
            (None, NameStyle::ComfyUi) => ScheduleKind::Normal,
        }
    }

    /// Whether the schedule loses its next-to-last σ: A1111 does that for DPM2, DPM2 a and
    /// DPM++ 3M SDE whatever the schedule type; InvokeAI, ComfyUI and k-diffusion never do.
    pub fn discards_next_to_last_sigma(&self) -> bool {
        self.style == NameStyle::A1111 && self.sampler.a1111_discards_next_to_last_sigma()
    }
}

impl From<Sampler> for SamplerChoice {
    /// Dream's default conventions are InvokeAI's.
    fn from(sampler: Sampler) -> Self {
        Self::new(sampler, NameStyle::InvokeAi)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sampler {given:?}; valid names: {}", valid_sampler_names().join(", "))]
pub struct UnknownSampler {
    pub given: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown schedule {given:?}; valid names: {}", valid_schedule_names().join(", "))]
pub struct UnknownSchedule {
    pub given: String,
}

/// Every accepted sampler name with what it means, InvokeAI's first: names several tools share
/// (`ddim`, `k_euler`) take the style of the first table that has them with the same case.
fn sampler_names() -> impl Iterator<Item = (&'static str, SamplerChoice)> + Clone {
    let invokeai = SAMPLERS
        .iter()
        .map(|row| (row.1, SamplerChoice::new(row.0, NameStyle::InvokeAi)));
    let a1111 = SAMPLERS
        .iter()
        .map(|row| (row.2, SamplerChoice::new(row.0, NameStyle::A1111)));
    let a1111_aliases = A1111_ALIASES.iter().map(|&(name, sampler, schedule)| {
        (
            name,
            SamplerChoice {
                sampler,
                schedule,
                style: NameStyle::A1111,
            },
        )
    });
    let comfyui = SAMPLERS.iter().filter_map(|row| {
        row.3
            .map(|name| (name, SamplerChoice::new(row.0, NameStyle::ComfyUi)))
    });
    invokeai.chain(a1111).chain(a1111_aliases).chain(comfyui)
}

/// Every accepted schedule name; `None` is A1111's "Automatic".
fn schedule_names() -> impl Iterator<Item = (&'static str, Option<ScheduleKind>)> + Clone {
    let comfyui = SCHEDULES
        .iter()
        .filter_map(|row| row.2.map(|name| (name, Some(row.0))));
    let a1111 = SCHEDULES.iter().map(|row| (row.1, Some(row.0)));
    let aliases = SCHEDULE_ALIASES
        .iter()
        .map(|&(name, schedule)| (name, Some(schedule)));
    std::iter::once((AUTOMATIC, None))
        .chain(comfyui)
        .chain(a1111)
        .chain(aliases)
        .chain(ScheduleKind::ALL.iter().map(|&s| (s.name(), Some(s))))
}

fn valid_sampler_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in sampler_names() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn valid_schedule_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in schedule_names() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The entry whose name equals `wanted` exactly, else the first equal ignoring ASCII case.
fn lookup<T>(
    wanted: &str,
    mut table: impl Iterator<Item = (&'static str, T)> + Clone,
) -> Option<T> {
    table
        .clone()
        .find(|(name, _)| *name == wanted)
        .or_else(|| table.find(|(name, _)| name.eq_ignore_ascii_case(wanted)))
        .map(|(_, value)| value)
}

/// Parses a schedule name: ComfyUI's (`karras`, `sgm_uniform`) or A1111's "Schedule type"
/// (`Karras`, `SGM Uniform`). `Automatic` gives `None`: the sampler's default.
pub fn parse_schedule(name: &str) -> Result<Option<ScheduleKind>, UnknownSchedule> {
    lookup(name.trim(), schedule_names()).ok_or_else(|| UnknownSchedule {
        given: name.to_string(),
    })
}

impl FromStr for ScheduleKind {
    type Err = UnknownSchedule;

    /// Like [`parse_schedule`], but `Automatic` names no particular schedule and is refused.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        parse_schedule(name)?.ok_or_else(|| UnknownSchedule {
            given: name.to_string(),
        })
    }
}

impl FromStr for SamplerChoice {
    type Err = UnknownSampler;

    /// Case-insensitive; accepts the InvokeAI, A1111 and ComfyUI names, and A1111's combined
    /// "<sampler> <schedule type>" names such as `DPM++ 2M Karras` or `DPM++ 3M SDE Exponential`
    /// (A1111 splits them the same way: a trailing schedule label after a space).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let wanted = name.trim();
        let unknown = || UnknownSampler {
            given: name.to_string(),
        };
        if let Some(choice) = lookup(wanted, sampler_names()) {
            return Ok(choice);
        }
        for (label, schedule) in SCHEDULES
            .iter()
            .map(|row| (row.1, row.0))
            .chain(SCHEDULE_ALIASES.iter().copied())
        {
            let Some(split) = wanted.len().checked_sub(label.len() + 1) else {
                continue;
            };
            let (head, tail) = wanted.split_at(split);
            if !tail.starts_with(' ') || !tail[1..].eq_ignore_ascii_case(label) {
                continue;
            }
            let a1111_labels = SAMPLERS
                .iter()
                .map(|row| (row.2, SamplerChoice::new(row.0, NameStyle::A1111)));
            if let Some(choice) = lookup(head, a1111_labels) {
                return Ok(SamplerChoice {
                    schedule: Some(schedule),
                    ..choice
                });
            }
        }
        Err(unknown())
    }
}

impl FromStr for Sampler {
    type Err = UnknownSampler;

    /// Any name [`SamplerChoice`] accepts that names no schedule of its own
    /// (`DPM++ 2M Karras` is refused here: it would lose its schedule).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.parse::<SamplerChoice>()? {
            SamplerChoice {
                sampler,
                schedule: None,
                ..
            } => Ok(sampler),
            _ => Err(UnknownSampler {
                given: name.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NameStyle::{ComfyUi, InvokeAi, A1111};
    use Sampler::*;
    use ScheduleKind::*;

    fn choice(sampler: Sampler, schedule: Option<ScheduleKind>, style: NameStyle) -> SamplerChoice {
        SamplerChoice {
            sampler,
            schedule,
            style,
        }
    }

    /// The names each tool offers, written out from the tools' sources (not from our tables):
    /// InvokeAI 2.x `SAMPLER_CHOICES` (ldm/invoke/args.py) and `_set_sampler_legacy`
    /// (ldm/generate.py), A1111 `samplers_k_diffusion`/`samplers_timesteps`/`samplers_lcm`
    /// labels and aliases, ComfyUI `KSAMPLER_NAMES` + `SAMPLER_NAMES` (comfy/samplers.py).
    #[test]
    fn every_name_in_the_three_tables_parses_to_its_sampler_and_schedule() {
        let table = [
            // InvokeAI 2.x
            ("ddim", Ddim, None, InvokeAi),
            ("plms", Plms, None, InvokeAi),
            ("k_lms", Lms, None, InvokeAi),
            ("k_euler", Euler, None, InvokeAi),
            ("k_euler_a", EulerAncestral, None, InvokeAi),
            ("k_heun", Heun, None, InvokeAi),
            ("k_dpm_2", Dpm2, None, InvokeAi),
            ("k_dpm_2_a", Dpm2Ancestral, None, InvokeAi),
            ("k_dpmpp_2", DpmPp2M, None, InvokeAi),
            ("k_dpmpp_2_a", DpmPp2SAncestral, None, InvokeAi),
            // Dream's names in InvokeAI's style
            ("k_dpmpp_sde", DpmPpSde, None, InvokeAi),
            ("k_dpmpp_2m_sde", DpmPp2MSde, None, InvokeAi),
            ("k_dpmpp_3m_sde", DpmPp3MSde, None, InvokeAi),
            ("unipc", UniPc, None, InvokeAi),
            ("lcm", Lcm, None, InvokeAi),
            ("ddpm", Ddpm, None, InvokeAi),
            // A1111 labels
            ("Euler", Euler, None, A1111),
            ("Euler a", EulerAncestral, None, A1111),
            ("Heun", Heun, None, A1111),
            ("DPM2", Dpm2, None, A1111),
            ("DPM2 a", Dpm2Ancestral, None, A1111),
            ("LMS", Lms, None, A1111),
            ("DPM++ 2M", DpmPp2M, None, A1111),
            ("DPM++ 2S a", DpmPp2SAncestral, None, A1111),
            ("DPM++ SDE", DpmPpSde, None, A1111),
            ("DPM++ 2M SDE", DpmPp2MSde, None, A1111),
            ("DPM++ 3M SDE", DpmPp3MSde, None, A1111),
            ("DDIM", Ddim, None, A1111),
            ("PLMS", Plms, None, A1111),
            ("UniPC", UniPc, None, A1111),
            ("LCM", Lcm, None, A1111),
            // A1111's legacy combined names
            ("LMS Karras", Lms, Some(Karras), A1111),
            ("DPM2 Karras", Dpm2, Some(Karras), A1111),
            ("DPM2 a Karras", Dpm2Ancestral, Some(Karras), A1111),
            ("DPM++ 2S a Karras", DpmPp2SAncestral, Some(Karras), A1111),
            ("DPM++ 2M Karras", DpmPp2M, Some(Karras), A1111),
            ("DPM++ SDE Karras", DpmPpSde, Some(Karras), A1111),
            ("DPM++ 2M SDE Karras", DpmPp2MSde, Some(Karras), A1111),
            (
                "DPM++ 2M SDE Exponential",
                DpmPp2MSde,
                Some(Exponential),
                A1111,
            ),
            ("DPM++ 3M SDE Karras", DpmPp3MSde, Some(Karras), A1111),
            (
                "DPM++ 3M SDE Exponential",
                DpmPp3MSde,
                Some(Exponential),
                A1111,
            ),
            ("Euler a Karras", EulerAncestral, Some(Karras), A1111),
            ("Euler SGM Uniform", Euler, Some(SgmUniform), A1111),
            // A1111 aliases
            ("k_euler_ancestral", EulerAncestral, None, A1111),
            ("k_dpmpp_2s_a", DpmPp2SAncestral, None, A1111),
            ("k_dpmpp_2m", DpmPp2M, None, A1111),
            ("k_lcm", Lcm, None, A1111),
            ("k_lms_ka", Lms, Some(Karras), A1111),
            ("k_dpm_2_ka", Dpm2, Some(Karras), A1111),
            ("k_dpm_2_a_ka", Dpm2Ancestral, Some(Karras), A1111),
            ("k_dpmpp_2s_a_ka", DpmPp2SAncestral, Some(Karras), A1111),
            ("k_dpmpp_2m_ka", DpmPp2M, Some(Karras), A1111),
            ("k_dpmpp_sde_ka", DpmPpSde, Some(Karras), A1111),
            ("k_dpmpp_2m_sde_ka", DpmPp2MSde, Some(Karras), A1111),
            ("k_dpmpp_3m_sde_ka", DpmPp3MSde, Some(Karras), A1111),
            ("k_dpmpp_3m_sde_exp", DpmPp3MSde, Some(Exponential), A1111),
            // ComfyUI
            ("euler", Euler, None, ComfyUi),
            ("euler_ancestral", EulerAncestral, None, ComfyUi),
            ("heun", Heun, None, ComfyUi),
            ("dpm_2", Dpm2, None, ComfyUi),
            ("dpm_2_ancestral", Dpm2Ancestral, None, ComfyUi),
            ("lms", Lms, None, ComfyUi),
            ("dpmpp_2s_ancestral", DpmPp2SAncestral, None, ComfyUi),
            ("dpmpp_sde", DpmPpSde, None, ComfyUi),
            ("dpmpp_2m", DpmPp2M, None, ComfyUi),
            ("dpmpp_2m_sde", DpmPp2MSde, None, ComfyUi),
            ("dpmpp_3m_sde", DpmPp3MSde, None, ComfyUi),
            ("uni_pc", UniPc, None, ComfyUi),
            // Names several tools share take the first table's style.
            ("ddim", Ddim, None, InvokeAi),
            ("lcm", Lcm, None, InvokeAi),
            ("ddpm", Ddpm, None, InvokeAi),
        ];
        for (name, sampler, schedule, style) in table {
            let expected = choice(sampler, schedule, style);
            assert_eq!(name.parse::<SamplerChoice>(), Ok(expected), "{name}");
            let shouted = name.to_ascii_uppercase();
            let parsed = shouted.parse::<SamplerChoice>().unwrap();
            assert_eq!(
                (parsed.sampler, parsed.schedule),
                (sampler, schedule),
                "{shouted}"
            );
            let padded = format!("  {name} ");
            assert_eq!(padded.parse::<SamplerChoice>(), Ok(expected), "{padded:?}");
        }
        // Every sampler is reachable under each tool's name for it.
        for sampler in Sampler::ALL {
            assert!(table
                .iter()
                .any(|row| row.1 == sampler && row.3 == InvokeAi));
            assert!(table.iter().any(|row| row.1 == sampler && row.3 == A1111) || sampler == Ddpm);
        }
    }

    #[test]
    fn every_schedule_name_parses() {
        let table = [
            // A1111 "Schedule type" (modules/sd_schedulers.py labels and aliases)
            ("Automatic", None),
            ("Uniform", Some(Normal)),
            ("Normal", Some(Normal)),
            ("Karras", Some(Karras)),
            ("Exponential", Some(Exponential)),
            ("Polyexponential", Some(PolyExponential)),
            ("SGM Uniform", Some(SgmUniform)),
            ("SGMUniform", Some(SgmUniform)),
            ("Simple", Some(Simple)),
            ("DDIM", Some(DdimUniform)),
            ("Beta", Some(A1111Beta)),
            // ComfyUI SCHEDULER_NAMES
            ("normal", Some(Normal)),
            ("karras", Some(Karras)),
            ("exponential", Some(Exponential)),
            ("sgm_uniform", Some(SgmUniform)),
            ("simple", Some(Simple)),
            ("ddim_uniform", Some(DdimUniform)),
            ("beta", Some(Beta)),
            // A1111's A1111 names in other cases
            ("automatic", None),
            ("KARRAS", Some(Karras)),
            ("sgm uniform", Some(SgmUniform)),
        ];
        for (name, schedule) in table {
            assert_eq!(parse_schedule(name), Ok(schedule), "{name}");
        }
        assert!("Automatic".parse::<ScheduleKind>().is_err());
        for schedule in ScheduleKind::ALL {
            assert_eq!(schedule.name().parse::<ScheduleKind>(), Ok(schedule));
            assert_eq!(schedule.a1111_name().parse::<ScheduleKind>(), Ok(schedule));
            if let Some(name) = schedule.comfyui_name() {
                assert_eq!(name.parse::<ScheduleKind>(), Ok(schedule));
            }
        }
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let err = "k_eulerr".parse::<SamplerChoice>().unwrap_err().to_string();
        for expected in ["k_eulerr", "k_euler", "DDIM", "DPM++ 2M", "dpmpp_2m_sde"] {
            assert!(err.contains(expected), "{expected} not in {err}");
        }
        let err = parse_schedule("karas").unwrap_err().to_string();
        for expected in ["karas", "karras", "SGM Uniform", "Automatic"] {
            assert!(err.contains(expected), "{expected} not in {err}");
        }
        for bad in [
            "",
            "DPM++ 2M Karas",
            "Karras",
            "DPM++ 2M  Karras",
            "k_dpmpp_2 karras",
        ] {
            assert!(bad.parse::<SamplerChoice>().is_err(), "{bad:?}");
        }
        // A combined name is a sampler *and* a schedule; as a bare sampler it is refused.
        assert!("DPM++ 2M Karras".parse::<Sampler>().is_err());
        assert_eq!("DPM++ 2M".parse::<Sampler>(), Ok(DpmPp2M));
    }

    #[test]
    fn metadata_names_round_trip() {
        for s in Sampler::ALL {
            let invokeai = s.invokeai_name().parse::<SamplerChoice>().unwrap();
            assert_eq!((invokeai.sampler, invokeai.style), (s, InvokeAi));
            assert_eq!(s.to_string().parse::<Sampler>(), Ok(s));
            assert_eq!(s.a1111_name().parse::<Sampler>(), Ok(s));
            if let Some(name) = s.comfyui_name() {
                assert_eq!(name.parse::<Sampler>(), Ok(s));
            }
        }
    }

    #[test]
    fn invokeai_switches_to_the_model_schedule_at_karras_max() {
        // ksampler.py: `if ddim_num_steps >= self.karras_max: model_sigmas else karras_sigmas`
        assert_eq!(invokeai_schedule(Euler, 29, INVOKEAI_KARRAS_MAX), Karras);
        assert_eq!(invokeai_schedule(Euler, 30, INVOKEAI_KARRAS_MAX), Normal);
        assert_eq!(invokeai_schedule(Lms, 1, 0), Normal);
        assert_eq!(invokeai_schedule(DpmPp2M, 999, 1000), Karras);
        assert_eq!(invokeai_schedule(Ddim, 10, INVOKEAI_KARRAS_MAX), Normal);
        let k_euler: SamplerChoice = "k_euler".parse().unwrap();
        assert_eq!(k_euler.schedule_for(20, INVOKEAI_KARRAS_MAX), Karras);
        assert_eq!(k_euler.schedule_for(50, INVOKEAI_KARRAS_MAX), Normal);
    }

    #[test]
    fn defaults_follow_the_tool_the_name_came_from() {
        let schedule = |name: &str| {
            name.parse::<SamplerChoice>()
                .unwrap()
                .schedule_for(50, INVOKEAI_KARRAS_MAX)
        };
        // A1111's per-sampler `scheduler` options.
        assert_eq!(schedule("DPM++ 2M"), Karras);
        assert_eq!(schedule("DPM++ 2S a"), Karras);
        assert_eq!(schedule("DPM++ SDE"), Karras);
        assert_eq!(schedule("DPM2"), Karras);
        assert_eq!(schedule("DPM2 a"), Karras);
        assert_eq!(schedule("DPM++ 2M SDE"), Exponential);
        assert_eq!(schedule("DPM++ 3M SDE"), Exponential);
        assert_eq!(schedule("Euler a"), Normal);
        assert_eq!(schedule("LMS"), Normal);
        // ComfyUI's KSampler defaults to "normal"; a named schedule always wins.
        assert_eq!(schedule("dpmpp_2m"), Normal);
        assert_eq!(schedule("LMS Karras"), Karras);
        assert_eq!(schedule("k_dpmpp_2"), Normal);
    }

    /// A1111's `discard_next_to_last_sigma` sampler option (`samplers_k_diffusion` in
    /// modules/sd_samplers_kdiffusion.py: DPM2, DPM2 a, DPM++ 3M SDE and their Karras and
    /// Exponential variants); other tools' names for the same samplers keep every σ.
    #[test]
    fn only_a1111_names_discard_the_next_to_last_sigma() {
        let table = [
            ("DPM2", true),
            ("DPM2 a", true),
            ("DPM2 Karras", true),
            ("DPM2 a Karras", true),
            ("k_dpm_2_ka", true),
            ("DPM++ 3M SDE", true),
            ("DPM++ 3M SDE Exponential", true),
            ("k_dpmpp_3m_sde_exp", true),
            ("DPM++ 2M SDE", false),
            ("DPM++ 2M Karras", false),
            ("DPM++ SDE", false),
            ("Euler a", false),
            ("Heun", false),
            ("LMS", false),
            ("k_dpm_2", false),
            ("k_dpm_2_a", false),
            ("k_dpmpp_3m_sde", false),
            ("dpm_2", false),
            ("dpm_2_ancestral", false),
            ("dpmpp_3m_sde", false),
        ];
        for (name, discards) in table {
            let choice: SamplerChoice = name.parse().unwrap();
            assert_eq!(choice.discards_next_to_last_sigma(), discards, "{name}");
        }
    }

    #[test]
    fn sampler_kinds() {
        let k: Vec<_> = Sampler::ALL
            .into_iter()
            .filter(|s| !s.is_k_diffusion())
            .collect();
        assert_eq!(k, [Ddim, Plms, UniPc, Lcm, Ddpm]);
        let noisy: Vec<_> = Sampler::ALL
            .into_iter()
            .filter(|s| s.needs_noise())
            .collect();
        assert_eq!(
            noisy,
            [
                EulerAncestral,
                Dpm2Ancestral,
                DpmPp2SAncestral,
                DpmPpSde,
                DpmPp2MSde,
                DpmPp3MSde,
                Lcm,
                Ddpm
            ]
        );
        assert!(DpmPp2MSde.is_sde() && !DpmPp2MSde.is_ancestral());
        assert!(
            Dpm2.a1111_discards_next_to_last_sigma()
                && !DpmPp2M.a1111_discards_next_to_last_sigma()
        );
    }
}
