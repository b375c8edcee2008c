//! Shared pieces of the reliability tests (issue 8): configs whose ids match the webhook
//! bodies built here, and small HTTP helpers.

#![allow(dead_code)]

use crate::harness::API_KEY;
use serde_json::{json, Value};

/// The Jellyfin server every generated event comes from.
pub const JF_SERVER: &str = "7bc43eb3bf2c4266980f3e30ab4d8fa4";
/// A second Jellyfin server, the push target in the propagation tests.
pub const JF_TARGET: &str = "0badc0de0badc0de0badc0de0badc0de";

/// Jellyfin user id of test user `i` (32 hex digits, as Jellyfin writes them).
pub fn jf_user(i: usize) -> String {
    format!("{:032x}", i + 1)
}

/// The `[server]` lines that fix the API key.
pub fn server_with_key() -> String {
    format!("api_key = {API_KEY:?}")
}

/// `users` users, each with one Jellyfin backend `jf` on [`JF_SERVER`] at `url`: every event is
/// applied by exactly one actor and nothing is ever pushed (no sibling to push to).
pub fn single_backend_users(users: usize, url: &str, token_prefix: &str) -> String {
    let mut out = String::new();
    for i in 0..users {
        out.push_str(&format!(
            "[users.u{i}.backends.jf]\ntype = \"jellyfin\"\nurl = {url:?}\ntoken = \"{token_prefix}{i}\"\nserver_id = {JF_SERVER:?}\nuser_id = {:?}\n\n",
            jf_user(i)
        ));
    }
    out
}

/// A user `name` with backend `src` (Jellyfin on [`JF_SERVER`], import only) and `dst`
/// (Jellyfin on [`JF_TARGET`] at `dst_url`, export): a change on `src` is pushed to `dst`.
pub fn pushing_user(
    name: &str,
    user_index: usize,
    src_url: &str,
    dst_url: &str,
    token: &str,
) -> String {
    format!(
        "[users.{name}.backends.src]\ntype = \"jellyfin\"\nurl = {src_url:?}\ntoken = \"{token}-src\"\nserver_id = {JF_SERVER:?}\nuser_id = {u:?}\nexport = false\n\n\
         [users.{name}.backends.dst]\ntype = \"jellyfin\"\nurl = {dst_url:?}\ntoken = \"{token}-dst\"\nserver_id = {JF_TARGET:?}\nuser_id = {u:?}\nexport = true\n\n",
        u = jf_user(user_index)
    )
}

/// The IMDb id of generated movie `n`.
pub fn imdb(n: usize) -> String {
    format!("tt{:08}", 10_000_000 + n)
}

/// A Jellyfin "mark played" webhook (UserDataSaved, TogglePlayed) for movie `n` of user `i`.
pub fn jf_mark_played(server: &str, user: usize, n: usize) -> String {
    jf_toggle(server, user, n, true)
}

/// A Jellyfin "mark played" / "mark unplayed" webhook for movie `n` of user `i`.
pub fn jf_toggle(server: &str, user: usize, n: usize, played: bool) -> String {
    json!({
        "ServerId": server,
        "ServerName": "jelly",
        "NotificationType": "UserDataSaved",
        "SaveReason": "TogglePlayed",
        "Played": played,
        "ItemId": format!("{server}-item-{n}"),
        "ItemType": "Movie",
        "Name": format!("Movie {n}"),
        "Year": 2000 + (n % 25) as u64,
        "RunTimeTicks": 60_000_000_000u64,
        "PlaybackPositionTicks": 0,
        "Provider_imdb": imdb(n),
        "NotificationUsername": format!("u{user}"),
        "UserId": jf_user(user),
    })
    .to_string()
}

/// A Jellyfin ItemAdded webhook for movie `n` on `server` (generic: every user of it).
pub fn jf_item_added(server: &str, n: usize) -> String {
    json!({
        "ServerId": server,
        "NotificationType": "ItemAdded",
        "ItemId": format!("{server}-item-{n}"),
        "ItemType": "Movie",
        "Name": format!("Movie {n}"),
        "Provider_imdb": imdb(n),
    })
    .to_string()
}

/// POST a Jellyfin-shaped JSON webhook; the status code and the JSON answer.
pub async fn post_jf(
    client: &reqwest::Client,
    url: &str,
    body: String,
) -> reqwest::Result<(u16, Value)> {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "Jellyfin-Server/10.10.7")
        .body(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// `played` of `imdb:<id>` on `backend` of `user`, from the items endpoint (`None`: unknown).
pub async fn played_on(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    backend: &str,
    imdb_id: &str,
) -> Option<bool> {
    let url = format!("{base}/status/users/{user}/items?external_id=imdb:{imdb_id}");
    let (code, v) = crate::harness::get_json(client, &url, API_KEY).await;
    assert_eq!(code, 200, "{url}: {v}");
    v["backends"]
        .as_array()?
        .iter()
        .find(|b| b["backend"] == backend)?["state"]["item"]["played"]
        .as_bool()
}

/// The global status object.
pub async fn global_status(client: &reqwest::Client, base: &str) -> Value {
    let (code, v) = crate::harness::get_json(client, &format!("{base}/status"), API_KEY).await;
    assert_eq!(code, 200, "status: {v}");
    v
}

/// A Jellyfin PlaybackProgress webhook: movie `n` of user `i` at `position_ms`.
pub fn jf_progress(server: &str, user: usize, n: usize, position_ms: u64) -> String {
    json!({
        "ServerId": server,
        "NotificationType": "PlaybackProgress",
        "ItemId": format!("{server}-item-{n}"),
        "ItemType": "Movie",
        "Name": format!("Movie {n}"),
        "RunTimeTicks": 60_000_000_000u64,
        "PlaybackPositionTicks": position_ms * 10_000,
        "IsPaused": false,
        "Provider_imdb": imdb(n),
        "NotificationUsername": format!("u{user}"),
        "UserId": jf_user(user),
    })
    .to_string()
}

/// A fake Jellyfin target with `movies` movies (`m<n>`, imdb from [`imdb`]) for `users` users,
/// and the config tables of those users, each with a source backend and that target
/// (`<prefix>-u<i>` / `<prefix>-u<i>-dst` tokens).
pub async fn pushing_target(
    movies: usize,
    users: usize,
    prefix: &str,
) -> (crate::fakes::FakeServer, String) {
    use crate::fakes::{FakeIdentity, FakeItem, FakeKind, FakeLibrary, FakeServer};
    let mut library = FakeLibrary::new();
    for n in 0..movies {
        library = library
            .with(FakeItem::movie(&format!("m{n}"), &format!("Movie {n}")).ext("imdb", &imdb(n)));
    }
    let fake = FakeServer::start_with(
        FakeKind::Jellyfin,
        library,
        FakeIdentity {
            server_id: Some(JF_TARGET.into()),
            user_id: Some(jf_user(0)),
            token: Some(format!("{prefix}-u0-dst")),
        },
    )
    .await;
    let mut text = String::from("max_requests_per_second = 1000.0\n\n");
    for i in 0..users {
        fake.add_user(&jf_user(i), &format!("{prefix}-u{i}-dst"));
        let url = fake.url().to_string();
        text.push_str(&pushing_user(
            &format!("u{i}"),
            i,
            &url,
            &url,
            &format!("{prefix}-u{i}"),
        ));
    }
    (fake, text)
}
