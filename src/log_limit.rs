//! Log volume bounded per call site, for the `vigil` binary's log output: a peer that can make
//! the server log a line per frame, connection or request (rejected frames, refused tokens,
//! accept errors) must not be able to fill the disk through the log. Each `tracing` event call
//! site may write `budget` lines per window; the rest are counted, and one line per call site
//! and window reports how many were suppressed. The counters on `/metrics` stay exact.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Metadata;
use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing_subscriber::layer::{Context, Filter};

/// Lines per call site per window.
pub const BUDGET: u32 = 100;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

struct Window {
    started: Instant,
    written: u32,
    /// Suppressed and not yet reported.
    suppressed: u64,
    name: &'static str,
}

/// A per-layer filter: at most `budget` events per call site per `window`. Clones share
/// their counts (one for the log layer, one for the reporting task).
#[derive(Clone)]
pub struct PerCallsite {
    budget: u32,
    window: Duration,
    // One entry per event call site that has fired: bounded by the program's call sites.
    windows: Arc<Mutex<HashMap<Identifier, Window>>>,
}

impl PerCallsite {
    /// A limit of `budget` events per call site per `window`.
    pub fn new(budget: u32, window: Duration) -> Self {
        PerCallsite { budget, window, windows: Arc::default() }
    }

    /// Whether an event from `meta` may be written now.
    fn admit(&self, meta: &'static Metadata<'static>, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = windows.entry(meta.callsite()).or_insert_with(|| Window {
            started: now,
            written: 0,
            suppressed: 0,
            name: meta.name(),
        });
        if now.duration_since(window.started) >= self.window {
            window.started = now;
            window.written = 0;
        }
        if window.written < self.budget {
            window.written += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// Call sites with suppressed events since the last call, and how many.
    pub fn take_suppressed(&self) -> Vec<(&'static str, u64)> {
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        windows.values_mut().filter(|w| w.suppressed > 0).map(|w| (w.name, std::mem::take(&mut w.suppressed))).collect()
    }

    /// Log, once per window, how many lines each call site had suppressed.
    pub async fn report(self) {
        let limit = self;
        let mut tick = tokio::time::interval(limit.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (callsite, suppressed) in limit.take_suppressed() {
                tracing::warn!(callsite, suppressed, window_secs = limit.window.as_secs(), "log lines suppressed");
            }
        }
    }
}

impl<S> Filter<S> for PerCallsite {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        // Spans are not lines; events are limited in `event_enabled`, where the call site's
        // static metadata is at hand.
        let _ = meta;
        true
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Only lines at INFO and above are limited: asking "sometimes" of every debug and trace
        // call site (ours and the dependencies') would keep the other filters from caching
        // their "never", and every disabled event on the hot path would be evaluated again.
        if meta.is_event() && *meta.level() <= tracing::Level::INFO {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _cx: &Context<'_, S>) -> bool {
        self.admit(event.metadata(), Instant::now())
    }

    /// No level of its own: the level filter beside it decides. Without a hint, the pair's
    /// hint is "none" (everything), and the `log` bridge, whose maximum level is set from it,
    /// hands every dependency's debug and trace record (fjall logs several per write) to
    /// `tracing`, only for the level filter to drop it there: found by profiling the harness.
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _event: &tracing::Event<'_>, _cx: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_flooding_call_site_writes_its_budget_and_the_rest_is_counted_per_call_site() {
        let limit = PerCallsite::new(5, Duration::from_secs(3600));
        let written = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(Count(Arc::clone(&written)).with_filter(limit.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..1000 {
                tracing::info!(n, "flood");
            }
            tracing::info!("another call site");
        });
        assert_eq!(written.load(Ordering::Relaxed), 6);
        let suppressed = limit.take_suppressed();
        assert_eq!(suppressed.len(), 1);
        assert_eq!(suppressed[0].1, 995);
        assert!(limit.take_suppressed().is_empty(), "reported once");
    }

    #[test]
    fn beside_a_level_filter_the_pair_keeps_that_filters_maximum_level() {
        use tracing::level_filters::LevelFilter;
        use tracing_subscriber::filter::FilterExt;
        let level = tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn");
        let pair = level.and(PerCallsite::new(5, Duration::from_secs(60)));
        // What `init()` sets as the `log` bridge's maximum: INFO, not "everything".
        let hint = <_ as Filter<tracing_subscriber::Registry>>::max_level_hint(&pair);
        assert_eq!(hint, Some(LevelFilter::INFO));
    }
}
