//! Issue 8 §4: storage problems at start, with the real binary. A data dir that cannot be
//! created exits non-zero with a message naming the path and the key to fix; a database in use
//! by another instance says so; a corrupted database (garbage written into the files of a
//! stopped instance) is moved aside, a new one is created, the service starts and status says
//! where the old one went. Never a panic.

use crate::harness::{bin, eventually, Served, TestDir, API_KEY};
use crate::reliability_common::*;
use std::time::Duration;

/// Run `watchstate serve` on `config` expecting it to fail at start; (exit code, stderr).
fn serve_fails(config: &std::path::Path) -> (i32, String) {
    let mut child = bin()
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("watchstate kept running although its storage is unusable");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "a panic instead of a message: {stderr}"
    );
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn reliability_storage_unwritable_data_dir_exits_with_a_clear_message() {
    let dir = TestDir::new();
    // Running as root, permissions stop nothing: a path below a regular file can never be a
    // directory, whoever we are.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = {:?}\n",
            file.join("data").display().to_string()
        ),
    )
    .unwrap();
    let (code, err) = serve_fails(&config);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("not-a-dir/data"), "names the path: {err}");
    assert!(
        err.contains("storage.path"),
        "names the key to change: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliability_storage_database_locked_by_another_instance() {
    let dir = TestDir::new();
    let config = dir.config(&server_with_key(), "");
    let _first = Served::start(&config);
    let (code, err) = serve_fails(&config);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("already running"), "says what is wrong: {err}");
}

/// Start an instance, get `events` events applied, stop it (gracefully or with SIGKILL), run
/// `damage` on its data dir, start again: the service must start, be ready, and report the
/// database it moved aside.
async fn corrupted(kill: bool, damage: impl Fn(&std::path::Path)) {
    let dir = TestDir::new();
    let config = dir.config(
        &server_with_key(),
        &single_backend_users(1, "http://127.0.0.1:9", "store-token-"),
    );
    let client = reqwest::Client::new();
    let mut served = Served::start(&config);
    let base = format!("http://{}/v1/api", served.addr);
    for n in 0..20 {
        let (code, body) = post_jf(
            &client,
            &format!("{base}/webhook"),
            jf_mark_played(JF_SERVER, 0, n),
        )
        .await
        .unwrap();
        assert_eq!(code, 202, "{body}");
    }
    eventually(Duration::from_secs(10), "events applied", || {
        let (client, base) = (client.clone(), base.clone());
        async move {
            (played_on(&client, &base, "u0", "jf", &imdb(19)).await == Some(true)).then_some(())
        }
    })
    .await;
    if kill {
        served.kill9();
    } else {
        served.signal("TERM");
        assert!(served
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()));
    }
    damage(&dir.data());

    let served = Served::start(&config);
    let base = format!("http://{}/v1/api", served.addr);
    let s = global_status(&client, &base).await;
    let aside = s["store"]["corrupt_database_moved_to"]
        .as_str()
        .unwrap_or_else(|| panic!("status does not report the moved database: {s}"));
    assert!(std::path::Path::new(aside).exists(), "{aside}");
    assert!(
        aside.starts_with(&dir.data().display().to_string()),
        "{aside}"
    );
    let r = client
        .get(format!("{base}/system/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = served.log_text();
    assert!(log.contains("moved aside"), "the log tells the user: {log}");
    assert!(!log.contains("panicked"), "{log}");
    // The new database works: events are accepted and applied again.
    let (code, body) = post_jf(
        &client,
        &format!("{base}/webhook"),
        jf_mark_played(JF_SERVER, 0, 99),
    )
    .await
    .unwrap();
    assert_eq!(code, 202, "{body}");
    eventually(
        Duration::from_secs(10),
        "event applied in the new database",
        || {
            let (client, base) = (client.clone(), base.clone());
            async move {
                (played_on(&client, &base, "u0", "jf", &imdb(99)).await == Some(true)).then_some(())
            }
        },
    )
    .await;
    let (code, _) = crate::harness::get_json(&client, &format!("{base}/status"), API_KEY).await;
    assert_eq!(code, 200);
}

/// Deterministic garbage.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliability_storage_garbage_db_file_is_moved_aside() {
    // sled itself opens this as an empty database without a word; the store notices.
    corrupted(false, |data| {
        std::fs::write(data.join("db"), garbage(100_000, 7)).unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliability_storage_garbage_after_kill9_is_moved_aside() {
    corrupted(true, |data| {
        let db = data.join("db");
        let len = std::fs::metadata(&db).unwrap().len() as usize;
        std::fs::write(&db, garbage(len.max(4096), 11)).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliability_storage_garbage_conf_and_snapshots_are_moved_aside() {
    corrupted(false, |data| {
        // sled reports this one as corruption itself.
        std::fs::write(data.join("conf"), garbage(62, 3)).unwrap();
        for e in std::fs::read_dir(data).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
            {
                std::fs::write(&p, garbage(5000, 5)).unwrap();
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliability_storage_truncated_db_file_is_moved_aside() {
    corrupted(false, |data| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(data.join("db"))
            .unwrap();
        f.set_len(0).unwrap();
    })
    .await;
}
