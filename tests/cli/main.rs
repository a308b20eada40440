//! The CLI tests: one binary, one module per feature.

mod support;

mod redis;
mod run;
mod store;
