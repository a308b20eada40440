//! The CLI tests: one binary, one module per feature.

mod support;

mod callers;
mod check;
mod claims;
mod completion;
mod crash;
mod disk;
mod docs;
mod everyday;
mod examples;
mod faults;
mod foreign;
mod guarantees;
mod hints;
mod hostile;
mod hosts;
mod inspect;
mod jobs;
mod journal;
mod layout;
mod limits;
mod lint;
mod liveness;
mod migration;
mod postgres;
mod postgres_tls;
mod purge;
mod redis;
mod replays;
mod report_examples;
mod run;
mod running;
mod shipped;
mod store;
mod trips;
