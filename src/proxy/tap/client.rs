//! The proxy's tap stream: one `Tap/Watch` stream to the control plane the configuration
//! stream goes to (same address, TLS trust and token; see the control plane's `tap` module). It
//! carries commands (start/stop a tap) one way and each tap's events and drop counts the other.
//! When the stream ends every tap stops; the proxy reconnects with the configuration stream's
//! back-off. A control plane without the tap service (older) answers `UNIMPLEMENTED`: the
//! proxy then retries at the longest back-off, quietly.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{TapHub, TapReader};
use crate::client::{BACKOFF_MAX, ClientSettings, backoff_cap, endpoint};
use skein_core::xds::tap::TapReport;
use skein_core::xds::tap::tap_client::TapClient;
use skein_core::xds::tap::tap_command::Command;
use skein_core::xds::tap::tap_report::Report;

/// Reports queued to the stream, all taps together (each tap's own buffer is before this).
const REPORT_QUEUE: usize = 64;
/// How often a tap's drop count is reported while it grows.
const DROPS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum TapStreamError {
    #[error(transparent)]
    Endpoint(#[from] crate::client::EndpointError),
    #[error("connecting: {0}")]
    Connect(tonic::transport::Error),
    #[error("{0}")]
    Token(crate::identity::IdentityError),
    #[error("the control plane refused the tap stream: {0}")]
    Refused(tonic::Status),
    #[error("the tap stream broke: {0}")]
    Broken(tonic::Status),
    #[error("the control plane closed the tap stream")]
    Closed,
}

/// Runs forever: keeps the tap stream open.
pub async fn run(settings: ClientSettings, hub: Arc<TapHub>) {
    let mut failures = 0u32;
    loop {
        let (err, connected) = stream(&settings, &hub).await;
        hub.stop_all();
        if connected {
            failures = 0;
        }
        let delay = match &err {
            TapStreamError::Refused(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::debug!("the control plane has no tap service; retrying later");
                BACKOFF_MAX
            }
            _ => {
                tracing::debug!(error = %err, "tap stream ended; reconnecting");
                backoff_cap(failures).mul_f64(fastrand::f64())
            }
        };
        failures = failures.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// One stream; says whether it got as far as being accepted.
async fn stream(settings: &ClientSettings, hub: &Arc<TapHub>) -> (TapStreamError, bool) {
    let channel = match endpoint(&settings.address, &settings.trust).await {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(channel) => channel,
            Err(err) => return (TapStreamError::Connect(err), false),
        },
        Err(err) => return (err.into(), false),
    };
    let (reports, mut queued) = mpsc::channel::<TapReport>(REPORT_QUEUE);
    let outgoing = futures::stream::poll_fn(move |cx| queued.poll_recv(cx));
    let mut request = tonic::Request::new(outgoing);
    if let Some(path) = &settings.token_path {
        let authorized = crate::identity::read_token(path)
            .await
            .and_then(|token| crate::identity::authorize(&mut request, &token));
        if let Err(err) = authorized {
            return (TapStreamError::Token(err), false);
        }
    }
    let mut commands = match TapClient::new(channel).watch(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (TapStreamError::Refused(status), false),
    };
    // Dropped with the stream: every forwarder ends with it.
    let mut forwarders = JoinSet::new();
    let err = loop {
        let command = match commands.message().await {
            Ok(Some(command)) => command,
            Ok(None) => break TapStreamError::Closed,
            Err(status) => break TapStreamError::Broken(status),
        };
        match command.command {
            Some(Command::Start(start)) => {
                let filter = start.filter.unwrap_or_default();
                match hub.start(start.id, filter) {
                    Ok(reader) => {
                        tracing::info!(tap = start.id, "tap started");
                        forwarders.spawn(forward(reader, reports.clone()));
                    }
                    Err(err) => tracing::warn!(tap = start.id, error = %err, "tap not started"),
                }
            }
            Some(Command::Stop(stop)) => {
                // The forwarder sends what is left, then ends as its receiver closes.
                hub.stop(stop.id);
                tracing::info!(tap = stop.id, "tap stopped");
            }
            None => {}
        }
        // Reap finished forwarders so the set does not grow.
        while forwarders.try_join_next().is_some() {}
    };
    (err, true)
}

/// Moves one tap's events to the stream, and its drop count when it grows.
async fn forward(reader: TapReader, reports: mpsc::Sender<TapReport>) {
    let TapReader {
        id,
        mut events,
        dropped,
    } = reader;
    let mut reported = 0;
    let mut ticks = tokio::time::interval(DROPS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let report = tokio::select! {
            event = events.recv() => match event {
                Some(event) => Report::Event(event),
                None => break,
            },
            _ = ticks.tick() => {
                let dropped = dropped.load(Ordering::Relaxed);
                if dropped == reported {
                    continue;
                }
                reported = dropped;
                Report::Dropped(dropped)
            }
        };
        let report = TapReport {
            tap_id: id,
            report: Some(report),
        };
        if reports.send(report).await.is_err() {
            return;
        }
    }
    let dropped = dropped.load(Ordering::Relaxed);
    if dropped != reported {
        let _ = reports
            .send(TapReport {
                tap_id: id,
                report: Some(Report::Dropped(dropped)),
            })
            .await;
    }
}
