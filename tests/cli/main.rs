//! The CLI tests: one binary, one module per feature.

mod support;

mod run;
mod shipped;
mod store;
