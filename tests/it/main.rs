//! The integration tests: one binary (fast to link), one module per area.

mod foundation;
mod harness;
