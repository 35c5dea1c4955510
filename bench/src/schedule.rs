//! Open-loop schedules: when each request of a connection is *meant* to be
//! sent. Latency counts from these times, whatever the server did before.

use std::time::{Duration, Instant};

/// The intended send times of one connection: `start + offset + k·interval`.
#[derive(Debug, Clone)]
pub struct Schedule {
    first: Instant,
    interval: Duration,
    sent: u64,
}

impl Schedule {
    /// The schedule of connection `index` of `connections`, together making
    /// `rate` requests per second in total. Connections are offset from each
    /// other so that the load is smooth rather than in bursts.
    pub fn new(start: Instant, rate: f64, connections: usize, index: usize) -> Schedule {
        let per_connection = rate / connections as f64;
        let interval = Duration::from_secs_f64(1.0 / per_connection);
        let offset = Duration::from_secs_f64(index as f64 / rate);
        Schedule {
            first: start + offset,
            interval,
            sent: 0,
        }
    }

    /// The intended time of the next request; advances the schedule.
    pub fn next_due(&mut self) -> Instant {
        let due = self.first + self.interval.mul_f64(self.sent as f64);
        self.sent += 1;
        due
    }

    /// Time between two requests of this connection.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_to_the_total_rate() {
        let start = Instant::now();
        let mut a = Schedule::new(start, 1000.0, 4, 0);
        let mut b = Schedule::new(start, 1000.0, 4, 1);
        assert_eq!(a.interval(), Duration::from_millis(4));
        assert_eq!(a.next_due(), start);
        assert_eq!(b.next_due(), start + Duration::from_millis(1));
        assert_eq!(a.next_due(), start + Duration::from_millis(4));
        // The schedule does not slip when a request is late: the k-th request
        // is always meant for start + k * interval.
        for _ in 0..98 {
            a.next_due();
        }
        assert_eq!(a.next_due(), start + Duration::from_millis(400));
    }
}
