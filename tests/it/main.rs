//! The integration tests: one binary (fast to link), one module per area.

mod harness;
mod support;

mod decode_fixtures;
mod decode_props;
mod foundation;

mod reliability_backend_faults;
mod reliability_common;
mod reliability_crash;
mod reliability_hostile;
mod reliability_security;
mod reliability_storage;
