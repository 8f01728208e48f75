//! # The regional federation gateway
//!
//! Lets a clinician in one region see a patient's record held by neighbouring regional care
//! records, in one FHIR R4 view. A thin shell of I/O around a core of plain functions.
//!
//! # Layout
//! - [`fhir`]: the FHIR R4 pieces the gateway reads and builds (NHS number, dates, outcomes,
//!   the `{region}.{id}` ids every reference is addressed by, `fhir::item`: a resource
//!   held as the bytes it came in with a small view of what decisions read, and
//!   `fhir::spliced`: an entry as the bytes written and runs of its answer's text) — pure
//! - [`query`]: a request becomes a typed patient query, or an error naming the parameter — pure
//! - [`access`]: per-item policy decisions at both decision points, memoised per class — pure
//! - [`merge`]: the regions' answers become one tagged, deduplicated Bundle — pure
//! - [`parallel`]: one request's CPU work spread over the cores (scoped threads) — pure
//! - [`audit`]: audit records, their canonical form and the tamper-evident hash chain — pure
//! - [`cache`]: regions' answers in a moka cache bounded by bytes, keyed so nothing leaks
//! - [`auth`]: clinician bearer tokens and the user context forwarded to peers — pure
//! - [`tls`]: certificate identity (pure), rustls configurations, the development CA
//! - [`trace`]: W3C trace context, continued or started, sent on to the peers — pure
//! - [`consent`]: patients' FHIR Consent directives read into per-item flags — pure
//! - [`config`]: the TOML configuration, parsed from text and validated
//! - [`record`]: the region's own record (directory in memory, or a FHIR server read page by
//!   page within item, byte and time bounds; `record::pages` decides links, bounds and cuts)
//! - [`client`]: outbound HTTP with time and size limits
//! - [`peers`]: the mTLS client per neighbour and the fan-out with deadlines
//! - [`pipeline`]: a clinician's query from typed query to answer bytes, as named phases (admit,
//!   kept view, fan out, view policy, merge, audit, write, keep); a peer's query on the
//!   federation face likewise
//! - [`store`]: the gateway's own store (consent directives, the audit trail, policy versions
//!   and break-glass reviews, paging cursors, the change log): one trait each, SQLite and
//!   PostgreSQL, one shared test suite each, versioned by migrations
//! - [`governance`]: policy versions read from files, activated and rolled back
//! - [`replicas`]: the replicas of a region kept in step through the store's change log
//!   (consent changes, policy activations), woken by PostgreSQL `LISTEN/NOTIFY`
//! - [`api`]: the clinician and federation faces (axum routers), and the governance API
//! - [`console`]: the governance console's page, embedded
//! - [`error`]: the one place errors become HTTP statuses and OperationOutcomes
//! - [`metrics`]: Prometheus metrics, `/healthz` and `/readyz` on the operations listener
//! - [`server`]: TLS accept loop, peer identity into the request, graceful shutdown
//! - [`connection`]: a connection's idle timeout, the cap per face, a lingering close
//! - [`app`]: the gateway built from its configuration
//! - [`demo`]: synthetic regional records and the local three-region federation

pub mod access;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod client;
pub mod config;
pub mod connection;
pub mod consent;
pub mod console;
pub mod demo;
pub mod error;
pub mod fhir;
pub mod governance;
pub mod merge;
pub mod metrics;
pub mod parallel;
pub mod peers;
pub mod pipeline;
pub mod query;
pub mod record;
pub mod replicas;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod view;
