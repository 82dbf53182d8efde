//! Rate-limited log lines for refusals. Every refused request is logged with its source, but a
//! flood of bad datagrams must not fill the disk: each [`LogLimit`] lets through at most a fixed
//! number of lines per second and counts the rest, and the next line that goes out says how many
//! were left out.

use std::sync::Mutex;
use std::time::Instant;

/// A budget of log lines per second, shared by every thread that logs one kind of event.
#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    /// A limit of `per_second` lines in each one-second window.
    pub const fn new(per_second: u32) -> LogLimit {
        LogLimit {
            per_second,
            state: Mutex::new(Window {
                started: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the number of lines left out since the
    /// last one that went out (the caller puts it in the line), or `None` to stay silent.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while counting; the counts are
        // still usable.
        let mut window = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = window
            .started
            .is_none_or(|started| now.duration_since(started).as_secs() >= 1);
        if expired {
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged >= self.per_second {
            window.suppressed += 1;
            return None;
        }
        window.logged += 1;
        Some(std::mem::take(&mut window.suppressed))
    }
}

/// Refusals of the registration protocol (bad signatures, unknown keys, replays, protected
/// mode, datagrams too broken to answer): at most 20 lines a second.
pub static REFUSALS: LogLimit = LogLimit::new(20);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lets_through_the_budget_then_counts_what_it_left_out() {
        let limit = LogLimit::new(3);
        let start = Instant::now();
        assert_eq!(limit.allow_at(start), Some(0));
        assert_eq!(limit.allow_at(start), Some(0));
        assert_eq!(limit.allow_at(start), Some(0));
        for _ in 0..100 {
            assert_eq!(limit.allow_at(start + Duration::from_millis(500)), None);
        }
        let next = start + Duration::from_millis(1001);
        assert_eq!(limit.allow_at(next), Some(100));
        assert_eq!(limit.allow_at(next), Some(0));
    }
}
