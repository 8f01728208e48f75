//! Cross-process and real-socket integration tests: real gateways on ephemeral ports, real
//! mutual TLS with certificates made at test time, fake peers that misbehave, and the `gateway`
//! binary itself. One test binary (faster links).

mod common;

mod audit;
mod cache;
mod cli;
mod deployment;
mod faces;
mod fanout;
mod fhir_artifacts;
mod governance;
mod limits;
mod operations;
mod policy;
mod real_server;
mod record_server;
mod references;
mod replicas;
mod resilience;
mod smart;
mod view;
