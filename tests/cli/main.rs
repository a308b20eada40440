//! The CLI tests: one binary, one module per feature.

mod support;

mod inspect;
mod purge;
mod run;
mod store;
