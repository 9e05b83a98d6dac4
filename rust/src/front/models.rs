//! The models the front answers for, as Python last described them: each one's batcher,
//! signature, metadata, config and readiness, and the names the server must serve to be
//! ready. Lookups say what the registry says in Python, in the same words: a name being
//! loaded is UNAVAILABLE, an unknown name or version NOT_FOUND. Readiness is published to
//! the health service: "" and the inference service follow the server, each model's name
//! follows that model.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use super::service::SERVICE_NAME;
use super::ServedModel;
use crate::error::Error;

/// A served model and whether it is ready now.
pub(super) struct Entry {
    pub model: ServedModel,
    ready: AtomicBool,
}

impl Entry {
    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct Table {
    by_name: HashMap<String, Arc<Entry>>,
    /// Names in the order they were served, for messages that list them.
    order: Vec<String>,
}

pub(super) struct ModelTable {
    table: RwLock<Table>,
    expected: Vec<String>,
    health: HealthReporter,
    /// The server's health as last published (None: never): a Watch hears of changes only.
    serving: Mutex<Option<bool>>,
}

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

impl ModelTable {
    pub(super) fn new(expected: Vec<String>) -> ModelTable {
        ModelTable {
            table: RwLock::default(),
            expected,
            health: HealthReporter::new(),
            serving: Mutex::new(None),
        }
    }

    pub(super) fn health_service(&self) -> HealthService {
        HealthService::from_health_reporter(self.health.clone())
    }

    /// Serves `model` (not ready until `set_ready`), replacing one of the same name.
    pub(super) fn serve(&self, model: ServedModel) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let name = model.name.clone();
        let entry = Arc::new(Entry {
            model,
            ready: AtomicBool::new(false),
        });
        if table.by_name.insert(name.clone(), entry).is_none() {
            table.order.push(name);
        }
    }

    /// Sets a served model's readiness; true when that changed it (false too when no model
    /// of that name is served).
    pub(super) fn set_ready(&self, name: &str, ready: bool) -> bool {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table
            .by_name
            .get(name)
            .is_some_and(|entry| entry.ready.swap(ready, Ordering::AcqRel) != ready)
    }

    pub(super) async fn publish_model_health(&self, name: &str, ready: bool) {
        self.health.set_service_status(name, status(ready)).await;
    }

    /// Publishes the server's health when it changed.
    pub(super) async fn publish_server_health(&self, serving: bool) {
        let last = self
            .serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(serving);
        if last == Some(serving) {
            return;
        }
        for service in ["", SERVICE_NAME] {
            self.health
                .set_service_status(service, status(serving))
                .await;
        }
    }

    /// Every expected model is served and ready.
    pub(super) fn server_ready(&self) -> bool {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        !self.expected.is_empty()
            && self
                .expected
                .iter()
                .all(|name| table.by_name.get(name).is_some_and(|e| e.is_ready()))
    }

    /// The served model `name` in `version` (any when empty), ready or not.
    pub(super) fn find(&self, name: &str, version: &str) -> Result<Arc<Entry>, Error> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = table.by_name.get(name) else {
            if self.expected.iter().any(|expected| expected == name) {
                return Err(Error::Unavailable(format!(
                    "model '{name}' is loading and not ready yet"
                )));
            }
            let known = if table.order.is_empty() {
                "none".to_owned()
            } else {
                let quoted: Vec<String> = table.order.iter().map(|n| format!("'{n}'")).collect();
                quoted.join(", ")
            };
            return Err(Error::NotFound(format!(
                "model '{name}' is not served here (models: {known})"
            )));
        };
        let served = &entry.model.version;
        if !version.is_empty() && version != served {
            let served = if served.is_empty() {
                "unversioned"
            } else {
                served
            };
            return Err(Error::NotFound(format!(
                "model '{name}' has no version '{version}' here (served version: '{served}')"
            )));
        }
        Ok(Arc::clone(entry))
    }

    /// `find`, and the model must be ready.
    pub(super) fn find_ready(&self, name: &str, version: &str) -> Result<Arc<Entry>, Error> {
        let entry = self.find(name, version)?;
        if !entry.is_ready() {
            return Err(Error::Unavailable(format!(
                "model '{name}' is not ready yet"
            )));
        }
        Ok(entry)
    }
}
