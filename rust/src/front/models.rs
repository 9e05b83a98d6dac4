//! The models the front answers for, as Python last described them: each name's versions
//! (each with its batcher, signature, metadata, config and readiness) and its default
//! version, the one a request without a version gets; and the names the server must serve
//! to be ready. Lookups say what the registry says in Python, in the same words: a name
//! being loaded is UNAVAILABLE, an unknown name or version NOT_FOUND. Readiness is
//! published to the health service: "" and the inference service follow the server, each
//! model's name follows that model's default version.
//!
//! A request holds the entry it was admitted with, so a version removed from the table
//! still answers what it already took (its batcher drains); nothing here waits for that.

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

use tokio::runtime::Handle;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use super::service::SERVICE_NAME;
use super::ServedModel;
use crate::error::Error;

/// The health service name that is serving while the process answers: for liveness
/// probes. A model of this name keeps it (its own readiness is not published under it).
pub const LIVENESS_SERVICE: &str = "liveness";

/// A served version of a model and whether it is ready now.
pub(super) struct Entry {
    pub model: ServedModel,
    ready: AtomicBool,
}

impl Entry {
    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The served versions of one name.
struct Versions {
    /// In the order they were served, for messages that list them.
    served: Vec<(String, Arc<Entry>)>,
    /// The version a request without one gets; None until one is given (or after it was
    /// unserved).
    default: Option<String>,
}

impl Versions {
    fn get(&self, version: &str) -> Option<&Arc<Entry>> {
        self.served
            .iter()
            .find(|(served, _)| served == version)
            .map(|(_, entry)| entry)
    }

    fn default_entry(&self) -> Option<&Arc<Entry>> {
        self.default
            .as_deref()
            .and_then(|version| self.get(version))
    }

    /// The served versions, quoted, as messages list them.
    fn listed(&self) -> String {
        let quoted: Vec<String> = self
            .served
            .iter()
            .map(|(version, _)| {
                let shown = if version.is_empty() {
                    "unversioned"
                } else {
                    version
                };
                format!("'{shown}'")
            })
            .collect();
        quoted.join(", ")
    }
}

#[derive(Default)]
struct Table {
    /// Only names with at least one version served.
    by_name: HashMap<String, Versions>,
    /// Names in the order they were served, for messages that list them.
    order: Vec<String>,
    /// The names the server must serve to be ready.
    expected: Vec<String>,
}

impl Table {
    /// Whether `name`'s default version is served and ready.
    fn default_ready(&self, name: &str) -> bool {
        self.by_name
            .get(name)
            .and_then(Versions::default_entry)
            .is_some_and(|entry| entry.is_ready())
    }
}

pub(super) struct ModelTable {
    table: RwLock<Table>,
    health: HealthReporter,
    /// The server's health as last published (None: never): a Watch hears of changes only.
    serving: Mutex<Option<bool>>,
    /// Each model's health as last published, held while one is published so that
    /// publications follow the table's changes in order.
    published: Mutex<HashMap<String, bool>>,
}

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// NOT_FOUND for a version `name` does not serve.
fn no_such_version(name: &str, version: &str, versions: &Versions) -> Error {
    Error::NotFound(format!(
        "model '{name}' has no version '{version}' here (served versions: {})",
        versions.listed()
    ))
}

impl ModelTable {
    pub(super) fn new(expected: Vec<String>) -> ModelTable {
        ModelTable {
            table: RwLock::new(Table {
                expected,
                ..Table::default()
            }),
            health: HealthReporter::new(),
            serving: Mutex::new(None),
            published: Mutex::default(),
        }
    }

    pub(super) fn health_service(&self) -> HealthService {
        HealthService::from_health_reporter(self.health.clone())
    }

    /// Serves `model`'s version, ready, replacing one of the same name and version; it
    /// becomes the default when the name has none.
    pub(super) fn serve(&self, model: ServedModel) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let name = model.name.clone();
        let version = model.version.clone();
        let entry = Arc::new(Entry {
            model,
            ready: AtomicBool::new(true),
        });
        if !table.by_name.contains_key(&name) {
            table.order.push(name.clone());
        }
        let versions = table.by_name.entry(name).or_insert_with(|| Versions {
            served: Vec::new(),
            default: None,
        });
        match versions.served.iter_mut().find(|(v, _)| *v == version) {
            Some((_, served)) => *served = entry,
            None => versions.served.push((version.clone(), entry)),
        }
        if versions.default_entry().is_none() {
            versions.default = Some(version);
        }
    }

    /// Stops serving `name`'s `version`; false when it was not served. When it was the
    /// default, the name has none until one is given.
    pub(super) fn unserve(&self, name: &str, version: &str) -> bool {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let Some(versions) = table.by_name.get_mut(name) else {
            return false;
        };
        let Some(at) = versions.served.iter().position(|(v, _)| v == version) else {
            return false;
        };
        versions.served.remove(at);
        if versions.default.as_deref() == Some(version) {
            versions.default = None;
        }
        if versions.served.is_empty() {
            table.by_name.remove(name);
            table.order.retain(|served| served != name);
        }
        true
    }

    /// Makes `version` of `name` the default; it must be served.
    pub(super) fn set_default(&self, name: &str, version: &str) -> Result<(), Error> {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let Some(versions) = table.by_name.get_mut(name) else {
            return Err(Error::NotFound(format!(
                "model '{name}' is not served here, so it has no default version"
            )));
        };
        if versions.get(version).is_none() {
            return Err(no_such_version(name, version, versions));
        }
        versions.default = Some(version.to_owned());
        Ok(())
    }

    /// Replaces the names the server must serve to be ready.
    pub(super) fn set_expected(&self, expected: Vec<String>) {
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .expected = expected;
    }

    /// Sets a served version's readiness (a version not served is not changed).
    pub(super) fn set_ready(&self, name: &str, version: &str, ready: bool) {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = table
            .by_name
            .get(name)
            .and_then(|versions| versions.get(version))
        {
            entry.ready.store(ready, Ordering::Release);
        }
    }

    /// Publishes the health of `name` (its default version's readiness; not serving
    /// without one) when it changed. Waits on `runtime`: call it from outside any runtime.
    pub(super) fn publish_model_health(&self, runtime: &Handle, name: &str) {
        if name == LIVENESS_SERVICE {
            return;
        }
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (known, ready) = {
            let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
            (table.by_name.contains_key(name), table.default_ready(name))
        };
        if !known && !published.contains_key(name) {
            // Never served: its health stays unknown.
            return;
        }
        if published.insert(name.to_owned(), ready) == Some(ready) {
            return;
        }
        // Held meanwhile: a later change cannot be published before this one.
        runtime.block_on(self.health.set_service_status(name, status(ready)));
    }

    /// Publishes the health of `name`, a model another process serves: its readiness, or
    /// not serving once it is no longer routed (None). Waits on `runtime`.
    pub(super) fn publish_routed_health(&self, runtime: &Handle, name: &str, ready: Option<bool>) {
        if name == LIVENESS_SERVICE {
            return;
        }
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ready = ready.unwrap_or(false);
        if published.insert(name.to_owned(), ready) == Some(ready) {
            return;
        }
        runtime.block_on(self.health.set_service_status(name, status(ready)));
    }

    /// Publishes the health of LIVENESS_SERVICE: serving for as long as the front answers,
    /// whether or not the models are ready (a liveness probe must not restart a server
    /// that is still loading, or one whose model is briefly unavailable).
    pub(super) async fn publish_liveness(&self) {
        self.health
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
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

    /// Every expected name has a ready default version, and the server was last published
    /// as serving: a process says so once all its fronts listen, so a client that finds it
    /// ready over gRPC does not find its HTTP port still closed, and never while it stops.
    pub(super) fn server_ready(&self) -> bool {
        let serving = *self.serving.lock().unwrap_or_else(PoisonError::into_inner);
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        serving == Some(true) && table.expected.iter().all(|name| table.default_ready(name))
    }

    /// The served version `version` of `name` (the default when empty), ready or not.
    pub(super) fn find(&self, name: &str, version: &str) -> Result<Arc<Entry>, Error> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let Some(versions) = table.by_name.get(name) else {
            if table.expected.iter().any(|expected| expected == name) {
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
        if version.is_empty() {
            return versions.default_entry().map(Arc::clone).ok_or_else(|| {
                Error::Unavailable(format!("model '{name}' has no version ready to serve"))
            });
        }
        versions
            .get(version)
            .map(Arc::clone)
            .ok_or_else(|| no_such_version(name, version, versions))
    }

    /// `find`, and the version must be ready.
    pub(super) fn find_ready(&self, name: &str, version: &str) -> Result<Arc<Entry>, Error> {
        let entry = self.find(name, version)?;
        if !entry.is_ready() {
            let message = if version.is_empty() {
                format!("model '{name}' is not ready yet")
            } else {
                format!("model '{name}' version '{version}' is not ready yet")
            };
            return Err(Error::Unavailable(message));
        }
        Ok(entry)
    }
}
