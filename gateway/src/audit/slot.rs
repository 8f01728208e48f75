//! The audit event of the request being handled: opened by the audit middleware, filled in
//! by the query's phases, written ahead of the answer.

use std::sync::{Arc, Mutex};

use http::StatusCode;

use super::AuditEvent;
use crate::app::Gateway;
use crate::error::ApiError;
use crate::store::StoreError;

/// The audit event of the request being handled; handlers add to it.
#[derive(Clone)]
pub struct AuditSlot {
    event: Arc<Mutex<AuditEvent>>,
    /// Written ahead by the handler (a change is recorded before it is made).
    written: Arc<std::sync::atomic::AtomicBool>,
}

impl AuditSlot {
    pub(crate) fn new(event: AuditEvent) -> Self {
        AuditSlot {
            event: Arc::new(Mutex::new(event)),
            written: Arc::default(),
        }
    }

    /// Whether the handler wrote the event ahead.
    pub(crate) fn written(&self) -> &std::sync::atomic::AtomicBool {
        &self.written
    }

    pub fn update(&self, f: impl FnOnce(&mut AuditEvent)) {
        if let Ok(mut e) = self.event.lock() {
            f(&mut e);
        }
    }

    /// Writes the event now, as a success with `status`, before the handler makes the change
    /// it records. If the change then fails, the middleware records the failure as well.
    pub async fn write_ahead(&self, gateway: &Gateway, status: StatusCode) -> Result<(), ApiError> {
        let mut event = self.take();
        event.status = status.as_u16();
        gateway
            .record(event)
            .await
            .map_err(|e| audit_unavailable(&e))?;
        self.written
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The slot of a request, if it is audited.
    pub fn of(parts: &http::request::Parts) -> Option<AuditSlot> {
        parts.extensions.get::<AuditSlot>().cloned()
    }

    pub(crate) fn take(&self) -> AuditEvent {
        match self.event.lock() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// The answer to a request whose audit record could not be written: nothing is released.
pub fn audit_unavailable(e: &StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "this access could not be recorded in the audit trail, so nothing is released; try again shortly",
    )
    .internal(format!("audit trail unavailable: {e}"))
}
