//! Keeping rayon's other workers awake through a decoding step.
//!
//! A decoding step is ~80 short parallel operations (a few hundred
//! microseconds each for a 1B model). Between two of them rayon's idle
//! workers go to sleep after a few dozen rounds without work, and each
//! operation then starts by waking them: a futex call, and on a virtual
//! machine an interrupt to a halted virtual CPU, on the step's critical
//! path. [`with_workers_awake`] has every other worker poll the pool for
//! work (running what it finds) until the step is done, as llama.cpp's
//! threads spin between operations.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on this rayon worker while the pool's other workers poll for
/// work instead of sleeping; returns what `f` returns. Allocates nothing
/// (the pollers are `rayon::join`'s stack jobs). Outside a pool, or in a
/// pool of one thread, it just runs `f`.
pub(crate) fn with_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let Some(me) = rayon::current_thread_index() else {
        return f();
    };
    let others = rayon::current_num_threads().saturating_sub(1);
    let done = AtomicBool::new(false);
    nest(others, me, &done, f)
}

/// `f` with `n` pollers: one `rayon::join` per poller, `f` innermost.
fn nest<R: Send>(n: usize, me: usize, done: &AtomicBool, f: impl FnOnce() -> R + Send) -> R {
    if n == 0 {
        // Set when `f` returns or unwinds: `join` waits for the pollers
        // even when `f` panics, and they must stop for the panic to go on.
        let _done = Done(done);
        return f();
    }
    rayon::join(|| nest(n - 1, me, done, f), || poll(me, done)).0
}

/// Sets its flag when dropped.
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs the pool's pending work until `done`. Returns at once on the
/// thread running the step: were it to take up a poller of its own step
/// while waiting inside the step, polling until the step ends would never
/// end (rayon's thieves take the oldest job first, the pollers, so this is
/// a safeguard rather than a path decoding takes).
fn poll(me: usize, done: &AtomicBool) {
    if rayon::current_thread_index() == Some(me) {
        return;
    }
    while !done.load(Ordering::Acquire) {
        if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool")
    }

    /// A step with parallel work inside: the sum of `0..n`, split finely
    /// so that the pollers steal and run parts of it.
    fn step(n: u32) -> u64 {
        (0..n).into_par_iter().with_max_len(64).map(u64::from).sum()
    }

    #[test]
    fn runs_the_step_outside_a_pool_and_in_pools_of_any_size() {
        assert_eq!(with_workers_awake(|| step(1000)), 499_500);
        for threads in [1, 2, 3, 4] {
            let r = pool(threads).install(|| with_workers_awake(|| step(1000)));
            assert_eq!(r, 499_500, "{threads} threads");
        }
    }

    #[test]
    fn many_steps_in_a_row_finish_and_leave_no_poller_behind() {
        // Steps back to back, as decoding runs them, on pools with more
        // threads than this machine has cores: every step must end (a
        // poller that kept polling after its step would hang `join`).
        for threads in [2, 4, 8] {
            let total: u64 =
                pool(threads).install(|| (0..300u32).map(|i| with_workers_awake(|| step(i))).sum());
            let expected: u64 = (0..300u64).map(|i| i * i.saturating_sub(1) / 2).sum();
            assert_eq!(total, expected, "{threads} threads");
        }
    }

    #[test]
    fn a_step_that_panics_stops_the_pollers_and_panics() {
        let pool = pool(3);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                with_workers_awake(|| {
                    step(100);
                    panic!("a step that fails");
                })
            })
        }));
        assert!(r.is_err());
        // The pool still works.
        assert_eq!(pool.install(|| with_workers_awake(|| step(10))), 45);
    }

    #[test]
    fn a_step_inside_a_step_finishes() {
        // The inner call's pollers may be run by the outer step's thread
        // from a wait: they must return at once there.
        let r = pool(3).install(|| with_workers_awake(|| with_workers_awake(|| step(500)) + 1));
        assert_eq!(r, 124_751);
    }
}
