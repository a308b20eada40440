//! The CLI tests: one binary, one module per feature.

mod support;

mod hosts;
mod postgres;
mod redis;
mod run;
mod store;
