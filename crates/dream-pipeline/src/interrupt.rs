//! Stopping a render from outside, e.g. on Ctrl-C: the samplers check after every step.
//!
//! One flag for the process, as a terminal's Ctrl-C is one (A1111's `state.interrupted`).
//! Setting it is async-signal-safe, so a SIGINT handler may call [`request`].

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks the running render to stop after its current step.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for and not yet taken.
pub fn is_requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Whether a stop was asked for; clears the request.
pub fn take() -> bool {
    REQUESTED.swap(false, Ordering::SeqCst)
}

/// The samplers' check after each step: an error while a stop is asked for (the request
/// stays for the caller to [`take`]).
pub(crate) fn check() -> candle_core::Result<()> {
    if is_requested() {
        Err(candle_core::Error::Msg("interrupted".into()))
    } else {
        Ok(())
    }
}
