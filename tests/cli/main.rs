//! The CLI tests: one binary, one module per feature.

mod support;

mod crash;
mod run;
mod store;
