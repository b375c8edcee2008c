//! The integration tests: one binary (fast to link), one module per area.

mod harness;
mod support;

mod decode_fixtures;
mod decode_props;
mod foundation;
mod webhook_http;
