//! What the pair actors write to the log. Its own test binary: a scoped subscriber only
//! sees every line when no other test of the process runs at the same time (tracing caches
//! each call site's interest for the whole process).

mod support;

use std::sync::Arc;
use support::*;
use watchstate_actors::backend::BackendError;
use watchstate_actors::event::EventKind;
use watchstate_actors::SyncSettings;

/// Log lines written while a test runs (the test's thread only).
#[derive(Clone, Default)]
struct CapturedLog(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A server that is down while twenty pushes wait for it: the log gets one warning for the
/// run of failures (not one per attempt of every push), the status shows every failure, and
/// a line says when pushes work again.
#[tokio::test(start_paused = true)]
async fn an_outage_is_logged_once_a_minute_not_at_every_failed_attempt() {
    let log = CapturedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let specs = vec![spec("alice", "plex"), spec("alice", "jelly")];
    let mut h = Harness::start(specs, SyncSettings::default()).await;
    let jelly = h.backend("alice", "jelly");
    let mut films = Vec::new();
    for i in 0..20 {
        let m = movie(&format!("x{i}"), &format!("tt9{i:03}"));
        for b in ["plex", "jelly"] {
            let mut item = m.clone();
            item.item_id = format!("o{i}-{b}");
            h.backend("alice", b).add(item.clone());
            h.send("alice", b, event(EventKind::ItemAdded, &item));
        }
        films.push(m);
    }
    h.settle().await;
    // Every push fails twice (a 500, which holds no other push), then works.
    for _ in 0..40 {
        jelly.fault(BackendError::Server {
            status: 500,
            message: "database is locked".into(),
            retry_after_ms: None,
        });
    }
    for (i, m) in films.iter().enumerate() {
        let mut item = m.clone();
        item.item_id = format!("o{i}-plex");
        h.send("alice", "plex", event(EventKind::Scrobble, &item));
    }
    eventually("every push to go through after its failures", || async {
        h.status("alice", "jelly").await.counters.pushed == 20
    })
    .await;
    assert_eq!(
        jelly.writes().len(),
        60,
        "two failed attempts and one that worked, each"
    );

    let lines = log.lines();
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("failed (attempt"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for 40 failures within a minute: {warnings:#?}"
    );
    assert!(
        warnings[0].contains("database is locked"),
        "{}",
        warnings[0]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INFO") && l.contains("pushes to this server work again after")),
        "{lines:#?}"
    );
    // The status still showed the failures.
    assert!(h
        .status("alice", "jelly")
        .await
        .last_error
        .is_some_and(|e| e.message.contains("database is locked")));

    // A push given up for good (a 404) is always a warning, even within the minute, and is
    // no run of failures: no "work again" line follows it.
    for _ in 0..2 {
        jelly.fault(BackendError::Client {
            status: 404,
            message: "item not found".into(),
        });
    }
    for (i, film) in films.iter().enumerate().take(2) {
        let mut item = film.clone();
        item.item_id = format!("o{i}-plex");
        h.send("alice", "plex", event(EventKind::MarkUnplayed, &item));
    }
    eventually("two dead letters", || async {
        h.status("alice", "jelly").await.outbox.dead_letters == 2
    })
    .await;
    let mut item = films[2].clone();
    item.item_id = "o2-plex".into();
    h.send("alice", "plex", event(EventKind::MarkUnplayed, &item));
    eventually("the next push to work", || async {
        h.status("alice", "jelly").await.counters.pushed == 21
    })
    .await;
    let lines = log.lines();
    let dead: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("failed after 1 attempt(s)"))
        .collect();
    assert_eq!(dead.len(), 2, "{dead:#?}");
    let again = lines
        .iter()
        .filter(|l| l.contains("work again after"))
        .count();
    assert_eq!(again, 1, "{lines:#?}");
}
