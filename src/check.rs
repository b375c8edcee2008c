//! `watchstate check-servers`: asks every configured backend who it is and reads the first
//! item of the user's library, so that a wrong `url`, `server_id`, `token` or `user_id` shows
//! before the service runs, with what to change. Tokens never appear in what it prints.

use crate::backend;
use crate::config::Config;
use std::sync::Arc;
use watchstate_actors::backend::{BackendApi, BackendError, ServerUser};
use watchstate_actors::event::normalize_id;

/// The outcome for one (user, backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCheck {
    /// `<user>/<backend>`.
    pub pair: String,
    pub ok: bool,
    /// What was found, or what is wrong and what to change.
    pub message: String,
}

impl std::fmt::Display for BackendCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok" } else { "FAILED" };
        write!(f, "{}: {mark}: {}", self.pair, self.message)
    }
}

/// Checks every configured backend at once, in the configuration's order.
pub async fn check_servers(config: &Config) -> Vec<BackendCheck> {
    let mut tasks = Vec::new();
    for (user, name, b) in config.pairs() {
        let pair = format!("{user}/{name}");
        let server_id = b.server_id.clone();
        let user_id = b.user_id.clone();
        let url = b.url.clone();
        let client = backend::build_client(config.client_config(b));
        tasks.push(tokio::spawn(async move {
            let (ok, message) = match client {
                Ok(client) => check_one(client, &url, &server_id, &user_id).await,
                Err(e) => (false, format!("cannot build the client: {e}")),
            };
            BackendCheck { pair, ok, message }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| BackendCheck {
            pair: "?".into(),
            ok: false,
            message: format!("the check stopped: {e}"),
        }));
    }
    out
}

async fn check_one(
    client: Arc<dyn BackendApi>,
    url: &str,
    server_id: &str,
    user_id: &str,
) -> (bool, String) {
    let identity = match client.identity().await {
        Ok(i) => i,
        Err(e) => return (false, format!("cannot reach the server at {url}: {e}")),
    };
    let about = match (&identity.name, &identity.version) {
        (Some(n), Some(v)) => format!("{n:?}, version {v}"),
        (Some(n), None) => format!("{n:?}"),
        (None, Some(v)) => format!("version {v}"),
        (None, None) => "a server".to_string(),
    };
    if normalize_id(&identity.server_id) != normalize_id(server_id) {
        return (
            false,
            format!(
                "the server at {url} ({about}) says its id is {:?}, but server_id is {server_id:?}: set server_id to its id, or url to the server that has this id (webhooks are routed by server_id)",
                identity.server_id
            ),
        );
    }
    // Jellyfin and Emby list their users for an API key: a `user_id` that is none of them is
    // named with the ones it could be. (A token that may not list users, or a list read
    // without ids, goes on to the library check: a server always has a user.)
    if let Ok(Some(users)) = client.users().await {
        if !users.is_empty()
            && !users
                .iter()
                .any(|u| normalize_id(&u.id) == normalize_id(user_id))
        {
            return (
                false,
                format!(
                    "{about}: user_id {user_id:?} is not a user of this server: check user_id; its users are {}",
                    users_text(&users)
                ),
            );
        }
    }
    match client.list_items(None, 1).await {
        // Jellyfin and Emby list the items without the user's data for a user id they do not
        // know (the scheduled sync reads no state from such items).
        Ok(page) if page.items.iter().any(|i| i.state_unknown) => (
            false,
            format!("{about}: the server lists the library without this user's play state: check user_id (the server's id of this user)"),
        ),
        Ok(page) => {
            let items = match page.total {
                Some(n) => format!("{n} movies and episodes listed"),
                None => format!("{} item(s) on the first page", page.items.len()),
            };
            (true, format!("{about}, id matches; {items}"))
        }
        Err(BackendError::Auth { status }) => (
            false,
            format!("{about}: the token was refused ({status}): check token (a Plex token of this user; a Jellyfin or Emby API key)"),
        ),
        Err(e) => (
            false,
            format!("{about}: reading the user's library failed: {e} (check user_id)"),
        ),
    }
}

/// `name (id)` of the first users, for a message.
fn users_text(users: &[ServerUser]) -> String {
    const SHOWN: usize = 20;
    let mut text = users
        .iter()
        .take(SHOWN)
        .map(|u| format!("{:?} (id {})", u.name, u.id))
        .collect::<Vec<_>>()
        .join(", ");
    if users.len() > SHOWN {
        text.push_str(&format!(" and {} more", users.len() - SHOWN));
    }
    text
}
