//! API key authentication (DESIGN.md §8): the key comes from `X-Apikey: K`,
//! `Authorization: Bearer K` or `?apikey=K` and is compared in constant time.

use super::reply::{error, Reply};
use super::Request;
use http::StatusCode;
use subtle::ConstantTimeEq;

/// How to pass the key, said in every 401.
const HOW: &str = "pass the API key as the header 'X-Apikey: <key>', as 'Authorization: Bearer <key>' or as the query parameter '?apikey=<key>' (see 'watchstate apikey')";

/// The key the request carries, if any.
pub fn presented_key(req: &Request) -> Option<String> {
    if let Some(k) = req.header("x-apikey") {
        return Some(k.trim().to_string());
    }
    if let Some(v) = req.header("authorization") {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim().to_string());
        }
    }
    req.query_param("apikey").map(|k| k.trim().to_string())
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

    #[test]
    fn compares_keys() {
        assert!(keys_equal("abc", "abc"));
        assert!(!keys_equal("abd", "abc"));
        assert!(!keys_equal("ab", "abc"));
    }
}
