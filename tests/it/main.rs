//! The one integration-test binary; each module is one area.

mod support;

mod decode_fixtures;
mod decode_props;
mod decode_route;
