//! The CLI tests: one binary, one module per feature.

mod support;

mod hosts;
mod inspect;
mod postgres;
mod purge;
mod redis;
mod run;
mod store;
