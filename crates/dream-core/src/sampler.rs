//! Sampler names. Users know samplers by the names their tools taught them; this table maps
//! every accepted spelling onto one `Sampler`, and gives back the names A1111 and InvokeAI
//! write into image metadata.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sampler {
    /// DDIM with η = 0 (deterministic), on the model's discrete timesteps.
    Ddim,
    /// k-diffusion's Euler method on the model's sigma schedule.
    Euler,
}

/// (sampler, InvokeAI name, A1111 name, other accepted spellings)
const NAMES: &[(Sampler, &str, &str, &[&str])] = &[
    (Sampler::Ddim, "ddim", "DDIM", &[]),
    (Sampler::Euler, "k_euler", "Euler", &["euler"]),
];

impl Sampler {
    pub const ALL: [Sampler; 2] = [Sampler::Ddim, Sampler::Euler];

    fn names(self) -> &'static (Sampler, &'static str, &'static str, &'static [&'static str]) {
        NAMES
            .iter()
            .find(|entry| entry.0 == self)
            .expect("every sampler has a row in NAMES")
    }

    /// The name InvokeAI's `-A` switch uses, e.g. `k_euler`.
    pub fn invokeai_name(self) -> &'static str {
        self.names().1
    }

    /// The name A1111 writes in its `parameters` metadata, e.g. `Euler`.
    pub fn a1111_name(self) -> &'static str {
        self.names().2
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.invokeai_name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sampler {given:?}; valid names: {}", valid_names().join(", "))]
pub struct UnknownSampler {
    pub given: String,
}

fn valid_names() -> Vec<&'static str> {
    NAMES
        .iter()
        .flat_map(|(_, invoke, a1111, others)| {
            [*invoke, *a1111].into_iter().chain(others.iter().copied())
        })
        .collect()
}

impl FromStr for Sampler {
    type Err = UnknownSampler;

    /// Case-insensitive; accepts the InvokeAI, A1111 and plain spellings.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let wanted = name.trim();
        NAMES
            .iter()
            .find(|(_, invoke, a1111, others)| {
                std::iter::once(invoke)
                    .chain(std::iter::once(a1111))
                    .chain(others.iter())
                    .any(|n| n.eq_ignore_ascii_case(wanted))
            })
            .map(|entry| entry.0)
            .ok_or_else(|| UnknownSampler {
                given: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_to_its_sampler() {
        let table = [
            ("ddim", Sampler::Ddim),
            ("DDIM", Sampler::Ddim),
            ("k_euler", Sampler::Euler),
            ("K_EULER", Sampler::Euler),
            ("Euler", Sampler::Euler),
            ("euler", Sampler::Euler),
        ];
        for (name, sampler) in table {
            assert_eq!(name.parse::<Sampler>(), Ok(sampler), "{name}");
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = "k_eulerr".parse::<Sampler>().unwrap_err().to_string();
        assert!(
            err.contains("k_eulerr") && err.contains("k_euler") && err.contains("DDIM"),
            "{err}"
        );
    }

    #[test]
    fn metadata_names_round_trip() {
        for s in Sampler::ALL {
            assert_eq!(s.a1111_name().parse::<Sampler>(), Ok(s));
            assert_eq!(s.invokeai_name().parse::<Sampler>(), Ok(s));
        }
    }
}
