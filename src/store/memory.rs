//! The `--memory` store: keeps nothing beyond the Broker's own history, so a restart starts
//! every stream anew (with a new epoch, so old cursors are reported as gaps, not misread).

use std::sync::Arc;

use std::time::SystemTime;

use super::{Record, Store, StoreError, StoredStream, Table};
use crate::event::Event;

/// Acknowledges every append at once.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn commit(&mut self, _events: &[Arc<Event>], _records: &[Record]) -> Result<(), StoreError> {
        Ok(())
    }

    fn load_table(&mut self, _table: Table) -> Result<Vec<(String, String)>, StoreError> {
        Ok(Vec::new())
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
