//! The CLI tests: one binary, one module per feature.

mod support;

mod check;
mod crash;
mod disk;
mod hosts;
mod inspect;
mod lint;
mod postgres;
mod postgres_tls;
mod purge;
mod redis;
mod run;
mod shipped;
mod store;
