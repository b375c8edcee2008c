//! API key authentication (DESIGN.md §8): the key comes from `X-Apikey: K`,
//! `Authorization: Bearer K` or `?apikey=K` and is compared in constant time.

use super::reply::{error, Reply};
use super::Request;
use http::StatusCode;
use subtle::ConstantTimeEq;

/// How to pass the key, said in every 401.
const HOW: &str = "pass the API key as the header 'X-Apikey: <key>', as 'Authorization: Bearer <key>' or as the query parameter '?apikey=<key>' (see 'watchstate apikey')";

/// The key the request carries, if any: the first of the three places that holds one (an
/// empty header, as some proxies and clients leave, does not hide a key given in the query).
pub fn presented_key(req: &Request) -> Option<String> {
    let header = req.header("x-apikey").map(str::trim);
    let bearer = req.header("authorization").and_then(|v| {
        let v = v.trim();
        (v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ")).then(|| v[7..].trim())
    });
    let query = req.query_param("apikey");
    let found = [header, bearer, query.as_deref().map(str::trim)]
        .into_iter()
        .flatten()
        .find(|k| !k.is_empty())
        .map(str::to_string);
    found
}

/// Constant-time equality: the time taken does not depend on where the keys differ.
pub fn keys_equal(presented: &str, expected: &str) -> bool {
    let a = presented.as_bytes();
    let b = expected.as_bytes();
    // Lengths are not secret (the generated key's length is documented); contents are.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `Ok` when the request carries the right key, else the 401 to answer.
pub fn check(req: &Request, expected: &str) -> Result<(), Box<Reply>> {
    match presented_key(req) {
        None => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            format!("this route needs the API key: {HOW}"),
        ))),
        Some(k) if keys_equal(&k, expected) => Ok(()),
        Some(_) => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            format!("the API key is wrong: {HOW}"),
        ))),
    }
}

/// The query string with the value of `apikey` replaced by `***`, for logs.
pub fn mask_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _))
                if k.eq_ignore_ascii_case("apikey")
                    || k.eq_ignore_ascii_case("x-plex-token")
                    || k.eq_ignore_ascii_case("api_key") =>
            {
                format!("{k}=***")
            }
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_key_in_queries() {
        assert_eq!(mask_query("a=1&apikey=secret&b=2"), "a=1&apikey=***&b=2");
        assert!(!mask_query("APIKEY=secret").contains("secret"));
    }

    fn request(headers: &[(&'static str, &str)], query: &str) -> Request {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        Request {
            method: http::Method::GET,
            path: "/v1/api/status".into(),
            query: query.into(),
            headers: map,
            request_id: "r".into(),
        }
    }

    #[test]
    fn an_empty_header_does_not_hide_the_key_in_the_query() {
        let key =
            |headers: &[(&'static str, &str)], query: &str| presented_key(&request(headers, query));
        assert_eq!(key(&[("x-apikey", "")], "apikey=k1").as_deref(), Some("k1"));
        assert_eq!(
            key(&[("authorization", "Bearer ")], "apikey=k1").as_deref(),
            Some("k1")
        );
        assert_eq!(
            key(&[("x-apikey", " k2 ")], "apikey=k1").as_deref(),
            Some("k2")
        );
        assert_eq!(
            key(&[("authorization", "bearer k3")], "").as_deref(),
            Some("k3")
        );
        assert_eq!(key(&[("x-apikey", "")], ""), None);
        assert_eq!(key(&[], "apikey="), None);
    }

    #[test]
    fn compares_keys() {
        assert!(keys_equal("abc", "abc"));
        assert!(!keys_equal("abd", "abc"));
        assert!(!keys_equal("ab", "abc"));
    }
}
