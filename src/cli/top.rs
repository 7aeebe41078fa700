//! `skein top deploy/NAME -n NS`: the most-requested (direction, method, authority, path) of
//! the target with count, success rate and latency (p50, max), built from the live tap
//! ([`super::tap`]); redrawn every second, or printed once after `--duration` with `--once`.
//! Memory is bounded: at most [`MAX_ROUTES`] rows, the latest [`LATENCIES_KEPT`] latencies
//! each.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::cli::output::columns;
use crate::cli::tap::{self, TapTarget};
use crate::controlplane::tap::Event;

/// Rows kept; requests to further paths are counted in no row.
pub const MAX_ROUTES: usize = 1000;
/// Latencies kept per row for the percentiles.
pub const LATENCIES_KEPT: usize = 1024;
/// Rows shown.
const SHOWN: usize = 20;

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub target: TapTarget,
    /// Print the table once, after --duration, instead of redrawing it (for scripts).
    #[arg(long)]
    pub once: bool,
    /// With --once: how long to watch before printing.
    #[arg(long, default_value = "5s", requires = "once")]
    pub duration: crate::api::Duration,
}

/// One (direction, method, authority, path) and what was seen of it.
#[derive(Debug, Default)]
struct Route {
    count: u32,
    successes: u32,
    latencies: VecDeque<f64>,
}

/// The table's state.
#[derive(Debug, Default)]
pub struct Top {
    routes: HashMap<(String, String, String, String), Route>,
    /// Requests seen while the table was full (counted in no row).
    pub overflow: u64,
}

/// Pure: whether an event counts as a success (as the request metrics classify).
pub fn succeeded(event: &Event) -> bool {
    event.status != 0
        && event.status < 500
        && event.grpc_status.is_none_or(|s| s == 0)
        && event.completed
}

impl Top {
    pub fn record(&mut self, event: &Event) {
        let key = (
            event.direction.clone(),
            event.method.clone(),
            event.authority.clone(),
            event.path.clone(),
        );
        if !self.routes.contains_key(&key) && self.routes.len() >= MAX_ROUTES {
            self.overflow += 1;
            return;
        }
        let route = self.routes.entry(key).or_default();
        route.count = route.count.saturating_add(1);
        route.successes = route.successes.saturating_add(u32::from(succeeded(event)));
        if route.latencies.len() == LATENCIES_KEPT {
            route.latencies.pop_front();
        }
        route.latencies.push_back(event.latency_ms);
    }

    /// The table, most requested first.
    pub fn table(&self) -> String {
        let mut routes: Vec<_> = self.routes.iter().collect();
        routes.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
        let mut rows = vec![
            [
                "DIRECTION",
                "METHOD",
                "AUTHORITY",
                "PATH",
                "COUNT",
                "SUCCESS",
                "P50",
                "MAX",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        for ((direction, method, authority, path), route) in routes.into_iter().take(SHOWN) {
            let mut sorted: Vec<f64> = route.latencies.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
            let max = sorted.last().copied().unwrap_or(0.0);
            let success = f64::from(route.successes) * 100.0 / f64::from(route.count.max(1));
            rows.push(vec![
                direction.clone(),
                method.clone(),
                authority.clone(),
                path.clone(),
                route.count.to_string(),
                format!("{success:.1}%"),
                format!("{p50:.1}ms"),
                format!("{max:.1}ms"),
            ]);
        }
        let mut table = columns(&rows);
        if self.overflow > 0 {
            table.push_str(&format!(
                "({} requests to further paths not shown: over {MAX_ROUTES} rows)\n",
                self.overflow
            ));
        }
        table
    }
}

pub async fn top(args: &TopArgs) -> anyhow::Result<()> {
    let lines = args.target.open(None).await?;
    let state = std::sync::Arc::new(std::sync::Mutex::new(Top::default()));
    let recorder = state.clone();
    let following = tap::follow(lines, move |_, event| {
        recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&event);
    });
    let table = || state.lock().unwrap_or_else(|e| e.into_inner()).table();
    if args.once {
        let duration = args.duration.as_std();
        // The stream ended before the time was up: an error says why (nothing to tap).
        if let Ok(result) = tokio::time::timeout(duration, following).await {
            result?;
        }
        print!("{}", table());
        return Ok(());
    }
    let mut following = std::pin::pin!(following);
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            result = &mut following => {
                result?;
                print!("{}", table());
                return Ok(());
            }
            _ = redraw.tick() => {
                // Clear the screen and go home, then the table.
                print!("\x1b[2J\x1b[H{}", table());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str, status: u32, latency_ms: f64) -> Event {
        Event {
            direction: "inbound".into(),
            method: "GET".into(),
            authority: "frontend:8080".into(),
            path: path.into(),
            status,
            latency_ms,
            completed: true,
            ..Event::default()
        }
    }

    #[test]
    fn the_most_requested_paths_come_first_with_their_success_and_latency() {
        let mut top = Top::default();
        for latency in [1.0, 2.0, 3.0] {
            top.record(&event("/a", 200, latency));
        }
        top.record(&event("/a", 503, 10.0));
        top.record(&event("/b", 200, 5.0));
        let table = top.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("DIRECTION"));
        assert!(
            lines[1].contains("/a") && lines[1].contains("75.0%"),
            "{table}"
        );
        assert!(
            lines[1].contains("3.0ms") && lines[1].contains("10.0ms"),
            "{table}"
        );
        assert!(
            lines[2].contains("/b") && lines[2].contains("100.0%"),
            "{table}"
        );
        let grpc_failure = Event {
            grpc_status: Some(14),
            ..event("/c", 200, 1.0)
        };
        assert!(!succeeded(&grpc_failure));
    }

    #[test]
    fn rows_and_latencies_are_bounded() {
        let mut top = Top::default();
        for i in 0..MAX_ROUTES + 5 {
            top.record(&event(&format!("/{i}"), 200, 1.0));
        }
        assert_eq!(top.routes.len(), MAX_ROUTES);
        assert_eq!(top.overflow, 5);
        for _ in 0..LATENCIES_KEPT * 2 {
            top.record(&event("/0", 200, 1.0));
        }
        let kept = top
            .routes
            .values()
            .map(|r| r.latencies.len())
            .max()
            .unwrap();
        assert_eq!(kept, LATENCIES_KEPT);
    }
}
