//! The `--memory` store: keeps nothing beyond the Broker's own history, so a restart starts
//! every stream anew (with a new epoch, so old cursors are reported as gaps, not misread).

use std::sync::Arc;

use std::time::SystemTime;

use super::{Store, StoreError, StoredStream};
use crate::event::Event;

/// Acknowledges every append at once.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn append(&mut self, _events: &[Arc<Event>]) -> Result<(), StoreError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn load(&mut self) -> Result<Vec<StoredStream>, StoreError> {
        Ok(Vec::new())
    }

    fn maintain(&mut self, _now: SystemTime) -> Result<(), StoreError> {
        Ok(())
    }
}
