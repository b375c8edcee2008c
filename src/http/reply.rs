//! JSON answers and the error shape of DESIGN.md §8: `{"error":{"code":N,"message":"..."}}`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

pub type Reply = Response<Bytes>;

/// A JSON answer with `status`.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        format!("{{\"error\":{{\"code\":500,\"message\":\"cannot encode the answer: {e}\"}}}}")
            .into_bytes()
    });
    let mut r = Response::new(Bytes::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An error answer; `message` tells the caller what was wrong and what to do.
pub fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    #[derive(Serialize)]
    struct Inner {
        code: u16,
        message: String,
    }
    #[derive(Serialize)]
    struct Outer {
        error: Inner,
    }
    json(
        status,
        &Outer {
            error: Inner {
                code: status.as_u16(),
                message: message.into(),
            },
        },
    )
}

/// Plain text (Prometheus metrics).
pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
