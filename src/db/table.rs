//! Typed tables over the store: each table says how its keys are encoded and what its records
//! are, so no caller builds keys or JSON by hand.
//!
//! A record is stored as one byte of schema version followed by its JSON. Records written
//! before versions existed are bare JSON (or, for some tables, bare text); their first byte is
//! never below 0x20, so they read as version 0 and [`Record::upgrade`] turns them into today's
//! shape. A version this build does not know is an error that names the table and key, never a
//! silent misreading.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{Batch, Store, StoreError, display_key};

/// How a table's key is laid out in bytes. Sequence numbers are big-endian, so keys sort as
/// numbers and new ones append at the B-tree's edge.
pub trait Key: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl Key for u64 {
    fn encode(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<u64> {
        <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
    }
}

impl Key for Uuid {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<Uuid> {
        Uuid::from_slice(bytes).ok()
    }
}

impl Key for String {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// A record of a table, with its schema version.
pub trait Record: Serialize + DeserializeOwned {
    /// The version written now; 1 or more (0 is "written before versions").
    const VERSION: u8;

    /// Read a record written with an older `version`. The default reads version 0 as the same
    /// JSON; a record whose shape changed overrides it.
    fn upgrade(version: u8, bytes: &[u8]) -> Result<Self, String> {
        match version {
            0 => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            v => Err(format!(
                "schema version {v} is not one this build reads (it writes {})",
                Self::VERSION
            )),
        }
    }
}

/// Bytes below this start a versioned record; legacy records start with text.
const FIRST_TEXT_BYTE: u8 = 0x20;

/// A named table of `K` → `V`. Declared as a constant beside the code that owns it.
pub struct Table<K, V> {
    name: &'static str,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Table<K, V> {}

impl<K: Key, V: Record> Table<K, V> {
    pub const fn new(name: &'static str) -> Table<K, V> {
        Table {
            name,
            _types: PhantomData,
        }
    }

    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Add a write of `key` → `value` to the batch.
    pub fn put(&self, batch: &mut Batch, key: &K, value: &V) -> Result<(), StoreError> {
        let key = key.encode();
        let mut bytes = vec![V::VERSION];
        serde_json::to_writer(&mut bytes, value).map_err(|source| StoreError::Encode {
            table: self.name.to_owned(),
            key: display_key(&key),
            source,
        })?;
        batch.put(self.name, key, bytes);
        Ok(())
    }

    /// Add a removal of `key` to the batch.
    pub fn delete(&self, batch: &mut Batch, key: &K) {
        batch.delete(self.name, key.encode());
    }

    /// The record at `key`, if any.
    pub fn get(&self, store: &Store, key: &K) -> Result<Option<V>, StoreError> {
        let key = key.encode();
        store
            .get(self.name, &key)?
            .map(|bytes| self.decode(&key, &bytes))
            .transpose()
    }

    /// Every record, in key order. One that cannot be read fails the scan, naming it.
    pub fn scan(&self, store: &Store) -> Result<Vec<(K, V)>, StoreError> {
        store
            .scan(self.name)?
            .into_iter()
            .map(|(key, bytes)| {
                let value = self.decode(&key, &bytes)?;
                let key = K::decode(&key).ok_or_else(|| StoreError::Record {
                    table: self.name.to_owned(),
                    key: display_key(&key),
                    reason: "the key is not laid out as this table's keys are".into(),
                })?;
                Ok((key, value))
            })
            .collect()
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<V, StoreError> {
        let fail = |reason: String| StoreError::Record {
            table: self.name.to_owned(),
            key: display_key(key),
            reason,
        };
        match bytes.first() {
            Some(&v) if v < FIRST_TEXT_BYTE => {
                let body = &bytes[1..];
                if v == V::VERSION {
                    serde_json::from_slice(body).map_err(|e| fail(e.to_string()))
                } else {
                    V::upgrade(v, body).map_err(fail)
                }
            }
            _ => V::upgrade(0, bytes).map_err(fail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Address {
        address: String,
    }

    impl Record for Address {
        const VERSION: u8 = 1;

        fn upgrade(version: u8, bytes: &[u8]) -> Result<Self, String> {
            match version {
                0 => String::from_utf8(bytes.to_vec())
                    .map(|address| Address { address })
                    .map_err(|e| e.to_string()),
                v => Err(format!("unknown version {v}")),
            }
        }
    }

    const NODES: Table<String, Address> = Table::new("nodes");

    fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), &["nodes"]).expect("store");
        (store, dir)
    }

    async fn commit(store: &Store, batch: Batch) {
        store.commit(batch).await.expect("committed");
    }

    #[tokio::test]
    async fn records_round_trip_with_their_version_and_keys_in_order() {
        let (store, _dir) = store();
        let mut batch = Batch::new();
        for name in ["b", "a"] {
            let value = Address {
                address: format!("{name}:1"),
            };
            NODES
                .put(&mut batch, &name.to_string(), &value)
                .expect("put");
        }
        commit(&store, batch).await;
        let raw = store.get("nodes", b"a").expect("get").expect("a row");
        assert_eq!(raw[0], 1, "the schema version leads the record");
        let rows = NODES.scan(&store).expect("scan");
        assert_eq!(rows[0].0, "a");
        assert_eq!(rows[1].1.address, "b:1");
    }

    #[tokio::test]
    async fn a_record_from_before_versions_is_upgraded() {
        let (store, _dir) = store();
        let mut batch = Batch::new();
        batch.put("nodes", b"w1".to_vec(), b"10.0.0.1:5556".to_vec());
        commit(&store, batch).await;
        let got = NODES.get(&store, &"w1".to_string()).expect("get");
        assert_eq!(
            got,
            Some(Address {
                address: "10.0.0.1:5556".into()
            })
        );
    }

    #[tokio::test]
    async fn a_version_from_the_future_is_an_error_naming_the_record() {
        let (store, _dir) = store();
        let mut batch = Batch::new();
        batch.put("nodes", b"w1".to_vec(), vec![9, b'{', b'}']);
        commit(&store, batch).await;
        let err = NODES.scan(&store).expect_err("unknown version");
        let text = err.to_string();
        assert!(
            text.contains("nodes") && text.contains("w1") && text.contains("9"),
            "{text}"
        );
    }
}
