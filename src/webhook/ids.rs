//! External (provider) ids: which provider a sender's key names, whether a value is a real id,
//! and whether a Plex guid names the item itself or its show.
//!
//! Every id that leaves this module is validated: imdb is `tt` + digits (lower-case `tt`),
//! tmdb/tvdb/tvmaze/tvrage/anidb are positive decimal numbers without leading zeros. Anything
//! else is dropped, because a wrong id would make the sync rules match the wrong item.

use super::fields;
use super::lazy::Obj;
use watchstate_actors::event::ExternalIds;

/// Maps a sender's provider name (`Imdb`, `Tv Maze`, `themoviedb`, `thetvdb`, `TVDB`, ...) to
/// its canonical key; `None` for providers we do not sync on (`TmdbCollection`, `Zap2It`, ...).
pub fn provider_key(raw: &str) -> Option<&'static str> {
    let key: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-' | '.'))
        .flat_map(char::to_lowercase)
        .collect();
    Some(match key.as_str() {
        "imdb" => "imdb",
        "tmdb" | "themoviedb" | "moviedb" => "tmdb",
        "tvdb" | "thetvdb" => "tvdb",
        "tvmaze" => "tvmaze",
        "tvrage" => "tvrage",
        "anidb" => "anidb",
        _ => return None,
    })
}

/// Returns the normalised id, or `None` when `value` is not a valid id for `provider`.
pub fn validate(provider: &str, value: &str) -> Option<String> {
    let value = value.trim();
    match provider {
        "imdb" => {
            let digits = value
                .strip_prefix("tt")
                .or_else(|| value.strip_prefix("TT"))
                .or_else(|| value.strip_prefix("Tt"))
                .or_else(|| value.strip_prefix("tT"))?;
            (!digits.is_empty() && digits.len() <= 12 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| format!("tt{digits}"))
        }
        "tmdb" | "tvdb" | "tvmaze" | "tvrage" | "anidb" => {
            if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let trimmed = value.trim_start_matches('0');
            (!trimmed.is_empty()).then(|| trimmed.to_string())
        }
        _ => None,
    }
}

/// Adds a validated id; the first valid value of a provider wins.
pub fn insert(ids: &mut ExternalIds, provider: &str, value: &str) -> bool {
    let Some(key) = provider_key(provider) else {
        return false;
    };
    if ids.contains_key(key) {
        return false;
    }
    match validate(key, value) {
        Some(v) => {
            ids.insert(key.to_string(), v);
            true
        }
        None => false,
    }
}

/// What a Plex guid names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuidTarget {
    /// The movie or episode itself.
    Item,
    /// The show an episode belongs to (legacy agents: `<series>/<season>/<episode>`).
    Series,
}

/// One id found in a Plex guid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlexGuid {
    pub target: GuidTarget,
    /// Canonical provider key.
    pub provider: &'static str,
    /// Validated id.
    pub id: String,
}

/// Parses one Plex guid (`Guid[].id` or `Metadata.guid`).
///
/// - `imdb://tt…`, `tmdb://…`, `tvdb://…`, `tvmaze://…`, `anidb://…`: the item's own id;
/// - legacy agents `com.plexapp.agents.<agent>://<id>[/<season>/<episode>][?lang=..]`:
///   `thetvdb`/`thetvdbdvdorder`/`xbmcnfotv` → tvdb, `themoviedb` → tmdb, `imdb`, `tvmaze`,
///   `anidb`, `xbmcnfo` (`tt…` → imdb, else tmdb), `hama` (`anidb-1`, `tvdb2-5`, `tsdb-7` → tmdb).
///   With season/episode numbers, or on an episode, the id names the show; on a movie the movie;
/// - `tv.plex.agents.nfo.movie|series://<kind>/<source>_<id>`;
/// - `plex://`, `local://`, `none`, music and other agents: no provider id.
pub fn parse_plex_guid(guid: &str, is_episode: bool) -> Option<PlexGuid> {
    let (scheme, rest) = guid.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.split(['?', '#']).next().unwrap_or_default().trim();
    if rest.is_empty() {
        return None;
    }
    if let Some(agent) = scheme.strip_prefix("com.plexapp.agents.") {
        let mut segments = rest.split('/').filter(|s| !s.is_empty());
        let first = segments.next()?;
        let relative = segments.next().is_some();
        let target = if relative || is_episode {
            GuidTarget::Series
        } else {
            GuidTarget::Item
        };
        let (provider, value) = match agent {
            "imdb" => ("imdb", first.to_string()),
            "themoviedb" | "tmdb" => ("tmdb", first.to_string()),
            "thetvdb" | "thetvdbdvdorder" | "tvdb" | "xbmcnfotv" => ("tvdb", first.to_string()),
            "tvmaze" => ("tvmaze", first.to_string()),
            "anidb" => ("anidb", first.to_string()),
            "xbmcnfo" => {
                if first.to_ascii_lowercase().starts_with("tt") {
                    ("imdb", first.to_string())
                } else {
                    ("tmdb", first.to_string())
                }
            }
            "hama" => parse_hama(first)?,
            _ => return None,
        };
        let id = validate(provider, &value)?;
        return Some(PlexGuid {
            target,
            provider,
            id,
        });
    }
    if let Some(kind) = scheme.strip_prefix("tv.plex.agents.nfo.") {
        let mut segments = rest.split('/').filter(|s| !s.is_empty());
        let (first, last) = (segments.next()?, segments.next_back());
        let (kind_segment, id_segment) = match last {
            Some(last) => (first, last),
            None => ("", first),
        };
        let (source, value) = id_segment.split_once('_')?;
        let provider = provider_key(source)?;
        let id = validate(provider, value)?;
        // A series agent's id names the show unless its kind segment says episode.
        let names_show = kind == "series"
            && (kind_segment.is_empty() || matches!(kind_segment, "show" | "series" | "tvshow"));
        let target = if names_show && is_episode {
            GuidTarget::Series
        } else {
            GuidTarget::Item
        };
        return Some(PlexGuid {
            target,
            provider,
            id,
        });
    }
    let provider = provider_key(&scheme)?;
    let id = validate(provider, rest)?;
    Some(PlexGuid {
        target: GuidTarget::Item,
        provider,
        id,
    })
}

/// HAMA ids: `anidb-123`, `anidb2-123`, `tvdb-456`, `tvdb3-456`, `tmdb-7`, `tsdb-7`, `imdb-tt1`.
fn parse_hama(value: &str) -> Option<(&'static str, String)> {
    let (source, id) = value.split_once('-')?;
    let source = source.trim_end_matches(|c: char| c.is_ascii_digit());
    let provider = match source.to_ascii_lowercase().as_str() {
        "anidb" => "anidb",
        "tvdb" => "tvdb",
        "tmdb" | "tsdb" => "tmdb",
        "imdb" => "imdb",
        _ => return None,
    };
    Some((provider, id.to_string()))
}

/// Emby `ProviderIds` (`{"Imdb": "tt…", "Tvdb": "…", "Tv Maze": …}`; any key case; values
/// strings or numbers).
pub fn provider_map(obj: &Obj<'_>) -> ExternalIds {
    let mut ids = ExternalIds::new();
    for (k, v) in obj.sorted() {
        if let Some(value) = fields::string(v) {
            insert(&mut ids, k, &value);
        }
    }
    ids
}

fn is_provider_key(k: &str) -> bool {
    k.get(..9)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("provider_"))
}

/// Jellyfin flat `Provider_<name>` keys (any case) of a "Send All Properties" body.
pub fn jellyfin_providers(obj: &Obj<'_>) -> ExternalIds {
    let mut ids = ExternalIds::new();
    for (k, v) in obj.sorted_where(is_provider_key) {
        if let Some(value) = fields::string(v) {
            insert(&mut ids, &k[9..], &value);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::super::lazy::parse_object;
    use super::*;
    use serde_json::json;

    fn g(guid: &str, ep: bool) -> Option<(GuidTarget, &'static str, String)> {
        parse_plex_guid(guid, ep).map(|p| (p.target, p.provider, p.id))
    }

    #[test]
    fn validation_rules() {
        assert_eq!(validate("imdb", "tt0137523"), Some("tt0137523".into()));
        assert_eq!(validate("imdb", "TT0137523"), Some("tt0137523".into()));
        assert_eq!(validate("imdb", "0137523"), None);
        assert_eq!(validate("imdb", "tt"), None);
        assert_eq!(validate("imdb", "tt12x"), None);
        assert_eq!(validate("tmdb", "27205"), Some("27205".into()));
        assert_eq!(validate("tvdb", " 81189 "), Some("81189".into()));
        assert_eq!(validate("tvdb", "0"), None);
        assert_eq!(validate("tvdb", "007"), Some("7".into()));
        assert_eq!(validate("tvmaze", "-5"), None);
        assert_eq!(validate("anidb", "12a"), None);
        assert_eq!(validate("anidb", ""), None);
        assert_eq!(validate("youtube", "abc"), None);
    }

    #[test]
    fn provider_names() {
        assert_eq!(provider_key("Tv Maze"), Some("tvmaze"));
        assert_eq!(provider_key("TVDB"), Some("tvdb"));
        assert_eq!(provider_key("themoviedb"), Some("tmdb"));
        assert_eq!(provider_key("TmdbCollection"), None);
        assert_eq!(provider_key("Zap2It"), None);
    }

    #[test]
    fn plex_modern_guids_are_item_ids() {
        assert_eq!(
            g("imdb://tt13429908", true),
            Some((GuidTarget::Item, "imdb", "tt13429908".into()))
        );
        assert_eq!(
            g("tmdb://2499236", true),
            Some((GuidTarget::Item, "tmdb", "2499236".into()))
        );
        assert_eq!(
            g("tvdb://8031280", false),
            Some((GuidTarget::Item, "tvdb", "8031280".into()))
        );
        assert_eq!(
            g("tvmaze://12", false),
            Some((GuidTarget::Item, "tvmaze", "12".into()))
        );
        assert_eq!(
            g("anidb://99", false),
            Some((GuidTarget::Item, "anidb", "99".into()))
        );
        assert_eq!(g("tmdb://abc", false), None);
    }

    #[test]
    fn plex_guids_without_provider_ids_are_dropped() {
        assert_eq!(g("plex://episode/5fbdc9a1bd6a1c002deb79cc", true), None);
        assert_eq!(g("local://12345", false), None);
        assert_eq!(g("com.plexapp.agents.none://12345", false), None);
        assert_eq!(g("tv.plex.agents.none://12345", false), None);
        assert_eq!(g("none", false), None);
        assert_eq!(
            g(
                "com.plexapp.agents.plexmusic://gracenote/track/1?lang=en",
                false
            ),
            None
        );
        assert_eq!(g("", false), None);
    }

    #[test]
    fn plex_legacy_tvdb_names_the_show() {
        assert_eq!(
            g("com.plexapp.agents.thetvdb://350665/1/4?lang=de", true),
            Some((GuidTarget::Series, "tvdb", "350665".into()))
        );
        assert_eq!(
            g(
                "com.plexapp.agents.thetvdbdvdorder://81189/2/3?lang=en",
                true
            ),
            Some((GuidTarget::Series, "tvdb", "81189".into()))
        );
        assert_eq!(
            g("com.plexapp.agents.themoviedb://1396/1/1?lang=en", true),
            Some((GuidTarget::Series, "tmdb", "1396".into()))
        );
        assert_eq!(
            g("com.plexapp.agents.xbmcnfotv://81189/1/1", true),
            Some((GuidTarget::Series, "tvdb", "81189".into()))
        );
    }

    #[test]
    fn plex_legacy_movie_agents_name_the_movie() {
        assert_eq!(
            g("com.plexapp.agents.imdb://tt0137523?lang=en", false),
            Some((GuidTarget::Item, "imdb", "tt0137523".into()))
        );
        assert_eq!(
            g("com.plexapp.agents.themoviedb://550?lang=en", false),
            Some((GuidTarget::Item, "tmdb", "550".into()))
        );
        assert_eq!(
            g("com.plexapp.agents.xbmcnfo://tt0137523", false),
            Some((GuidTarget::Item, "imdb", "tt0137523".into()))
        );
        assert_eq!(
            g("com.plexapp.agents.xbmcnfo://550", false),
            Some((GuidTarget::Item, "tmdb", "550".into()))
        );
    }

    #[test]
    fn plex_hama_guids() {
        assert_eq!(
            g("com.plexapp.agents.hama://anidb-12345/1/4?lang=en", true),
            Some((GuidTarget::Series, "anidb", "12345".into()))
        );
        assert_eq!(
            g("com.plexapp.agents.hama://tvdb3-81797/1/1", true),
            Some((GuidTarget::Series, "tvdb", "81797".into()))
        );
        assert_eq!(
            g("com.plexapp.agents.hama://tsdb-1429?lang=en", false),
            Some((GuidTarget::Item, "tmdb", "1429".into()))
        );
        assert_eq!(
            g("com.plexapp.agents.hama://imdb-tt0245429", false),
            Some((GuidTarget::Item, "imdb", "tt0245429".into()))
        );
        assert_eq!(g("com.plexapp.agents.hama://kitsu-1", false), None);
    }

    #[test]
    fn plex_nfo_agents() {
        assert_eq!(
            g("tv.plex.agents.nfo.movie://movie/imdb_tt0137523", false),
            Some((GuidTarget::Item, "imdb", "tt0137523".into()))
        );
        assert_eq!(
            g("tv.plex.agents.nfo.series://show/tvdb_81189", true),
            Some((GuidTarget::Series, "tvdb", "81189".into()))
        );
        assert_eq!(g("tv.plex.agents.nfo.movie://movie/12345", false), None);
    }

    #[test]
    fn emby_provider_ids_any_case() {
        let v = json!({"Imdb": "tt11650328", "TVDB": 7889611, "tv maze": "12", "TmdbCollection": "5", "Tmdb": ""});
        let ids = provider_map(&parse_object(&v.to_string()));
        assert_eq!(ids.get("imdb").map(String::as_str), Some("tt11650328"));
        assert_eq!(ids.get("tvdb").map(String::as_str), Some("7889611"));
        assert_eq!(ids.get("tvmaze").map(String::as_str), Some("12"));
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn jellyfin_provider_keys() {
        let v = json!({"Provider_anidb": "238801", "provider_IMDB": "tt1", "Provider_tmdbcollection": "9", "Provider_tvdb": "x", "Provider": "1"});
        let ids = jellyfin_providers(&parse_object(&v.to_string()));
        assert_eq!(ids.len(), 2);
        assert_eq!(ids["anidb"], "238801");
        assert_eq!(ids["imdb"], "tt1");
    }
}
