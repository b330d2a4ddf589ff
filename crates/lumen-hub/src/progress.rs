//! One overall progress for a set of files: bytes done of total, a
//! smoothed rate and the time left. What is shown never goes backwards —
//! a user complaint about other downloaders — even when a file has to
//! start over (its hash did not match, or the server ignored a range):
//! the bar holds still until the download catches up.

use std::time::{Duration, Instant};

/// Seconds over which the rate is smoothed.
const SMOOTHING_S: f64 = 3.0;

/// Progress of several files together.
#[derive(Debug, Clone)]
pub struct Progress {
    sizes: Vec<u64>,
    done: Vec<u64>,
    shown: u64,
    rate: f64,
    last: Option<(Instant, u64)>,
}

/// What to display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressSnapshot {
    /// Bytes done (never less than before).
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
    /// Smoothed bytes per second.
    pub bytes_per_s: f64,
    /// Time left at that rate, once there is a rate.
    pub eta: Option<Duration>,
}

impl ProgressSnapshot {
    /// `done / total` in `[0, 1]` (1 for nothing to do).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        }
    }
}

impl Progress {
    /// Files of these sizes, none started.
    pub fn new(sizes: &[u64]) -> Self {
        Self {
            sizes: sizes.to_vec(),
            done: vec![0; sizes.len()],
            shown: 0,
            rate: 0.0,
            last: None,
        }
    }

    /// File `file` now has `done` bytes (more than before, or fewer if it
    /// started over); unknown files are ignored. Returns what to show.
    pub fn update(&mut self, file: usize, done: u64, now: Instant) -> ProgressSnapshot {
        if let (Some(slot), Some(&size)) = (self.done.get_mut(file), self.sizes.get(file)) {
            *slot = done.min(size);
        }
        let sum: u64 = self.done.iter().sum();
        match self.last {
            Some((t, bytes)) if now > t => {
                let dt = (now - t).as_secs_f64();
                // Only real progress counts towards the rate.
                let gained = sum.saturating_sub(bytes) as f64;
                let alpha = 1.0 - (-dt / SMOOTHING_S).exp();
                self.rate += alpha * (gained / dt - self.rate);
                self.last = Some((now, sum));
            }
            Some(_) => {}
            None => self.last = Some((now, sum)),
        }
        self.shown = self.shown.max(sum);
        self.snapshot()
    }

    /// The current figures.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let total: u64 = self.sizes.iter().sum();
        let left = total.saturating_sub(self.shown);
        ProgressSnapshot {
            done: self.shown,
            total,
            bytes_per_s: self.rate,
            eta: (self.rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / self.rate)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards_when_a_file_starts_over() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = Progress::new(&[1000, 3000]);
        assert_eq!(p.update(0, 500, at(0)).done, 500);
        assert_eq!(p.update(1, 1500, at(1)).done, 2000);
        // File 1 failed its hash check and restarts from zero.
        let s = p.update(1, 0, at(2));
        assert_eq!(s.done, 2000);
        let s = p.update(1, 1000, at(3));
        assert_eq!(s.done, 2000, "held until the download catches up");
        let s = p.update(1, 2500, at(4));
        assert_eq!(s.done, 3000);
        p.update(0, 1000, at(5));
        let s = p.update(1, 3000, at(6));
        assert_eq!((s.done, s.total), (4000, 4000));
        assert_eq!(s.fraction(), 1.0);
        assert_eq!(s.eta, Some(Duration::ZERO));
    }

    #[test]
    fn rate_and_time_left_follow_a_steady_download() {
        let t0 = Instant::now();
        let mut p = Progress::new(&[100_000_000]);
        let mut s = p.update(0, 0, t0);
        assert_eq!(s.eta, None);
        for sec in 1..=30 {
            s = p.update(0, sec * 1_000_000, t0 + Duration::from_secs(sec));
        }
        assert!((s.bytes_per_s - 1e6).abs() < 1e4, "{}", s.bytes_per_s);
        let eta = s.eta.expect("eta").as_secs_f64();
        assert!((eta - 70.0).abs() < 2.0, "{eta}");
        // Sizes beyond the file's are clamped; unknown files ignored.
        assert_eq!(
            p.update(0, u64::MAX, t0 + Duration::from_secs(31)).done,
            100_000_000
        );
        assert_eq!(
            p.update(7, 5, t0 + Duration::from_secs(32)).done,
            100_000_000
        );
        assert_eq!(Progress::new(&[]).snapshot().fraction(), 1.0);
    }
}
