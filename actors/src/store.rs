//! What the actors need from storage, as a trait: a few named key-value trees and atomic
//! batches across them. The sled implementation lives in `src/store.rs`; tests use
//! [`MemoryStore`]. Values are bytes: the actors choose their own encoding.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::RwLock;

/// One (user, backend) pair: the unit of state, of actors, and of routing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PairKey {
    /// The user's name in `config.toml` (`[users.<user>]`).
    pub user: String,
    /// The backend's name under that user (`[users.<user>.backends.<backend>]`).
    pub backend: String,
}

impl PairKey {
    pub fn new(user: impl Into<String>, backend: impl Into<String>) -> Self {
        PairKey {
            user: user.into(),
            backend: backend.into(),
        }
    }
}

impl fmt::Display for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user, self.backend)
    }
}

/// The trees the system uses. Keys inside a tree are chosen by the caller; keys of pair data
/// start with the pair so that one pair's data is one prefix scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// Accepted webhook events not yet applied; key = big-endian u64 sequence.
    Journal,
    /// Pair items, index, outbox, cursors, counters.
    Pairs,
    /// Process-wide values: api key, schema version.
    Meta,
}

impl Tree {
    pub fn name(self) -> &'static str {
        match self {
            Tree::Journal => "journal",
            Tree::Pairs => "pairs",
            Tree::Meta => "meta",
        }
    }
}

/// One write of a batch: `Some` puts, `None` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub tree: Tree,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Writes applied together or not at all (e.g. an item's new state and the removal of the
/// journal entry that caused it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }
    pub fn put(&mut self, tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op {
            tree,
            key: key.into(),
            value: Some(value.into()),
        });
    }
    pub fn remove(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.ops.push(Op {
            tree,
            key: key.into(),
            value: None,
        });
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StoreError(pub String);

/// Storage as the actors see it. Calls are synchronous and quick (sled); `apply` is atomic.
/// Durability of `apply` is the implementation's business: the journal entry an effect removes
/// is already durable, so an effect lost in a crash is replayed from the journal.
pub trait Store: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every (key, value) whose key starts with `prefix`, in key order.
    #[allow(clippy::type_complexity)]
    fn scan_prefix(&self, tree: Tree, prefix: &[u8])
        -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>;
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;
    /// Make everything applied so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// An in-memory [`Store`] for tests and benchmarks. Reads share the lock, as sled's reads
/// do not wait for each other (10 000 actors loading at once, `benches/actors.rs`).
#[derive(Debug, Default)]
pub struct MemoryStore {
    #[allow(clippy::type_complexity)]
    trees: RwLock<BTreeMap<(Tree, Vec<u8>), Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let trees = self.trees.read().unwrap();
        Ok(trees.get(&(tree, key.to_vec())).cloned())
    }

    fn scan_prefix(
        &self,
        tree: Tree,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let trees = self.trees.read().unwrap();
        Ok(trees
            .range((tree, prefix.to_vec())..)
            .take_while(|((t, k), _)| *t == tree && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut trees = self.trees.write().unwrap();
        for op in batch.ops {
            match op.value {
                Some(v) => {
                    trees.insert((op.tree, op.key), v);
                }
                None => {
                    trees.remove(&(op.tree, op.key));
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_scans_one_prefix_in_order() {
        let s = MemoryStore::new();
        let mut b = Batch::new();
        b.put(Tree::Pairs, b"a/2".to_vec(), b"2".to_vec());
        b.put(Tree::Pairs, b"a/1".to_vec(), b"1".to_vec());
        b.put(Tree::Pairs, b"b/1".to_vec(), b"x".to_vec());
        b.put(Tree::Meta, b"a/3".to_vec(), b"m".to_vec());
        s.apply(b).unwrap();
        let got = s.scan_prefix(Tree::Pairs, b"a/").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, b"a/1");
        let mut b = Batch::new();
        b.remove(Tree::Pairs, b"a/1".to_vec());
        s.apply(b).unwrap();
        assert_eq!(s.get(Tree::Pairs, b"a/1").unwrap(), None);
    }
}
