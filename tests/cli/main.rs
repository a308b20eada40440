//! The CLI tests: one binary, one module per feature.

mod support;

mod hosts;
mod postgres;
mod run;
mod store;
