//! What the benchmark examples share with the `dream` binary's setup.

/// glibc's malloc hands every large block (above a threshold that grows to 32 MiB) back to the
/// kernel on `free` and maps a fresh one on the next `malloc`, so each large activation costs a
/// page fault per 4 KiB. Keeping freed blocks in the heap makes them reusable. The `dream`
/// binary does the same at startup (see its `keep_freed_memory`).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// User + system time of all the process's threads, in seconds.
pub fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
