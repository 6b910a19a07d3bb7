//! Typed tables over the store: each table says how its keys are encoded and what its records
//! are, so no caller builds keys or JSON by hand.
//!
//! A record is stored as one byte of schema version followed by its body: JSON for most tables,
//! or a compact binary form ([`Encoding::Binary`]) for the records there are millions of. Records
//! written before versions existed are bare JSON (or, for some tables, bare text); their first
//! byte is never below 0x20, so they read as version 0 and [`Record::upgrade`] turns them into
//! today's shape. A version this build does not know is an error that names the table and key,
//! never a silent misreading.

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

/// How the body of a record is laid out after its version byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON: self-describing, so a field added with a default needs no new version.
    Json,
    /// postcard's form of the serde model: fields in declaration order with no names, integers
    /// as varints, enums by variant index. About a third of the JSON's size and several times
    /// faster both ways, but not self-describing: any change to the record's fields or to the
    /// order of an enum's variants needs a new version (and an [`Record::upgrade`] from the old).
    Binary,
}

/// A record of a table, with its schema version.
pub trait Record: Serialize + DeserializeOwned {
    /// The version written now; 1 or more (0 is "written before versions").
    const VERSION: u8;
    /// How records of [`Record::VERSION`] are laid out.
    const ENCODING: Encoding = Encoding::Json;

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
        let version = vec![V::VERSION];
        let encoded = match V::ENCODING {
            Encoding::Json => {
                let mut bytes = version;
                serde_json::to_writer(&mut bytes, value)
                    .map(|()| bytes)
                    .map_err(|e| e.to_string())
            }
            Encoding::Binary => postcard::to_extend(value, version).map_err(|e| e.to_string()),
        };
        let bytes = encoded.map_err(|reason| StoreError::Encode {
            table: self.name.to_owned(),
            key: display_key(&key),
            reason,
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
        let mut rows = Vec::new();
        self.scan_each(store, |key, value| {
            rows.push((key, value));
            Ok(())
        })?;
        Ok(rows)
    }

    /// Every record, in key order, handed to `each` as it is decoded; the first error (of a
    /// record, or of `each`) ends the scan.
    pub fn scan_each(
        &self,
        store: &Store,
        mut each: impl FnMut(K, V) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        store.scan_with(self.name, |key, bytes| {
            let value = self.decode(key, bytes)?;
            let key = K::decode(key).ok_or_else(|| StoreError::Record {
                table: self.name.to_owned(),
                key: display_key(key),
                reason: "the key is not laid out as this table's keys are".into(),
            })?;
            each(key, value)
        })
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
                    match V::ENCODING {
                        Encoding::Json => {
                            serde_json::from_slice(body).map_err(|e| fail(e.to_string()))
                        }
                        Encoding::Binary => decode_binary(body).map_err(fail),
                    }
                } else {
                    V::upgrade(v, body).map_err(fail)
                }
            }
            _ => V::upgrade(0, bytes).map_err(fail),
        }
    }
}

/// A whole binary record: bytes left over mean it was not written as this version's shape.
fn decode_binary<V: DeserializeOwned>(body: &[u8]) -> Result<V, String> {
    match postcard::take_from_bytes(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!(
            "{} byte(s) left after the record: it does not have this version's shape",
            rest.len()
        )),
        Err(e) => Err(format!("not this version's binary shape: {e}")),
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

    const TASKS: Table<u64, crate::task::Task> = Table::new("tasks");

    fn task_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), &["tasks"]).expect("store");
        (store, dir)
    }

    /// A task with every field set, and fixed, so its bytes are too.
    fn fixed_task() -> crate::task::Task {
        use chrono::TimeZone;
        let mut task = crate::task::Task::new("cube-demo/busybox:latest");
        task.id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        task.name = "web".into();
        task.state = crate::task::State::Running;
        task.attempt = 3;
        task.cmd = vec!["httpd".into(), "-f".into()];
        task.env = vec!["A=1".into()];
        task.cpu = 0.5;
        task.memory = 64 << 20;
        task.exposed_ports = vec!["80/tcp".into()];
        task.port_bindings.insert("80/tcp".into(), "8080".into());
        task.host_ports.insert("80/tcp".into(), "8080".into());
        task.restart_policy = crate::task::RestartPolicy::Always;
        task.health_check = Some("/".into());
        task.desired = crate::task::Goal::Stopped;
        task.worker = Some("w1".into());
        task.container_id = Some("c0ffee".into());
        task.exit_code = Some(-1);
        task.error = Some("oops".into());
        task.created_at = chrono::Utc
            .timestamp_opt(1_800_000_000, 5)
            .single()
            .expect("a date");
        task.start_time = Some(task.created_at);
        task.service = Some("web".into());
        task.version = 2;
        task.slot = 1;
        task.constraints = vec!["zone==a".parse().expect("a constraint")];
        task.spread_by = Some("rack".into());
        task.volumes = vec![crate::volume::Volume::parse("data:/data:ro").expect("a volume")];
        task.attempts = vec![
            crate::task::Attempt {
                attempt: 1,
                worker: Some("w0".into()),
                container_id: Some("c1".into()),
                state: crate::task::State::Failed,
                exit_code: Some(137),
                error: Some("OOM killed".into()),
                start_time: Some(task.created_at),
                finish_time: Some(task.created_at),
                ended_at: task.created_at,
            },
            crate::task::Attempt {
                attempt: 2,
                worker: Some("w2".into()),
                container_id: None,
                state: crate::task::State::Running,
                exit_code: None,
                error: None,
                start_time: None,
                finish_time: None,
                ended_at: task.created_at,
            },
        ];
        task
    }

    /// [`fixed_task`] as a record of an older version holds it: without its history.
    fn fixed_task_before_attempts() -> crate::task::Task {
        let mut task = fixed_task();
        task.attempts.clear();
        task
    }

    #[tokio::test]
    async fn task_records_are_binary_and_round_trip() {
        let (store, _dir) = task_store();
        let task = fixed_task();
        let mut batch = Batch::new();
        TASKS.put(&mut batch, &7, &task).expect("put");
        commit(&store, batch).await;
        let raw = store
            .get("tasks", &7u64.to_be_bytes())
            .expect("get")
            .expect("a row");
        let json = serde_json::to_vec(&task).expect("json");
        assert_eq!(raw[0], 4, "version 4 is binary");
        assert!(
            raw.len() * 2 < json.len(),
            "{} bytes, JSON {}",
            raw.len(),
            json.len()
        );
        let back = TASKS.get(&store, &7).expect("get").expect("a task");
        assert_eq!(
            serde_json::to_value(&back).expect("json"),
            serde_json::to_value(&task).expect("json")
        );
    }

    /// The binary shape is the order of the fields of `Task` (and of `Attempt`) and of the
    /// variants of its enums. If this fails, the shape changed: give `Task`'s record a new
    /// version, read version 4 in its `upgrade` (keep the old shape as a type of its own, as
    /// `TaskV2` and `TaskV3` are), move these bytes to a test that they still read, and pin the
    /// new bytes here.
    #[test]
    fn the_task_record_layout_is_pinned() {
        let bytes = postcard::to_allocvec(&fixed_task()).expect("encode");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex, PINNED_TASK,
            "the binary shape of a task record changed"
        );
    }

    /// A version 2 record's body (before services, constraints and volumes), as the version 2
    /// build pinned it.
    const PINNED_TASK_V2: &str = concat!(
        "100123456789abcdef0123456789abcdef03776562020318637562652d64656d6f2f62757379626f783a6c61",
        "7465737402056874747064022d660103413d31000000000000e03f8080802000010638302f74637001063830",
        "2f7463700438303830010638302f746370043830383006616c77617973030001012f05802001010277310106",
        "633066666565010101046f6f707380c8ceb40d050180c8ceb40d0500",
    );

    #[tokio::test]
    async fn version_2_task_records_still_read() {
        let (store, _dir) = task_store();
        let mut v2 = vec![2u8];
        v2.extend(unhex(PINNED_TASK_V2));
        let mut batch = Batch::new();
        batch.put("tasks", 1u64.to_be_bytes().to_vec(), v2);
        commit(&store, batch).await;
        let got = TASKS.get(&store, &1).expect("readable").expect("a task");
        let mut want = fixed_task_before_attempts();
        want.service = None;
        want.version = 0;
        want.slot = 0;
        want.constraints.clear();
        want.spread_by = None;
        want.volumes.clear();
        assert_eq!(got, want);
    }

    /// A version 3 record's body (before the history of attempts), as the version 3 build
    /// pinned it.
    const PINNED_TASK_V3: &str = concat!(
        "100123456789abcdef0123456789abcdef0377656201037765620201020318637562652d64656d6f2f627573",
        "79626f783a6c617465737402056874747064022d660103413d31000000000000e03f8080802000010638302f",
        "746370010638302f7463700438303830010638302f746370043830383006616c77617973030001012f058020",
        "01077a6f6e653d3d6101047261636b010464617461052f646174610101010277310106633066666565010101",
        "046f6f707380c8ceb40d050180c8ceb40d0500",
    );

    #[tokio::test]
    async fn version_3_task_records_still_read() {
        let (store, _dir) = task_store();
        let mut v3 = vec![3u8];
        v3.extend(unhex(PINNED_TASK_V3));
        let mut batch = Batch::new();
        batch.put("tasks", 1u64.to_be_bytes().to_vec(), v3);
        commit(&store, batch).await;
        let got = TASKS.get(&store, &1).expect("readable").expect("a task");
        assert_eq!(got, fixed_task_before_attempts());
    }

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    const PINNED_TASK: &str = concat!(
        "100123456789abcdef0123456789abcdef0377656201037765620201020318637562652d64656d6f2f627573",
        "79626f783a6c617465737402056874747064022d660103413d31000000000000e03f8080802000010638302f",
        "746370010638302f7463700438303830010638302f746370043830383006616c77617973030001012f058020",
        "01077a6f6e653d3d6101047261636b010464617461052f646174610101010277310106633066666565010101",
        "046f6f707380c8ceb40d050180c8ceb40d05000201010277300102633104019202010a4f4f4d206b696c6c65",
        "640180c8ceb40d050180c8ceb40d0580c8ceb40d05020102773200020000000080c8ceb40d05",
    );

    #[tokio::test]
    async fn task_records_of_the_json_versions_still_read() {
        let (store, _dir) = task_store();
        let task = fixed_task();
        let json = serde_json::to_vec(&task).expect("json");
        let mut batch = Batch::new();
        let mut v1 = vec![1];
        v1.extend_from_slice(&json);
        batch.put("tasks", 1u64.to_be_bytes().to_vec(), v1);
        batch.put("tasks", 2u64.to_be_bytes().to_vec(), json);
        batch.put("tasks", 3u64.to_be_bytes().to_vec(), vec![4, 1, 2, 3]);
        batch.put("tasks", 4u64.to_be_bytes().to_vec(), vec![3, 1, 2, 3]);
        commit(&store, batch).await;
        for key in [1, 2] {
            let got = TASKS.get(&store, &key).expect("readable").expect("a task");
            assert_eq!(got.id, task.id);
            assert_eq!(got.port_bindings, task.port_bindings);
        }
        let err = TASKS
            .get(&store, &3)
            .expect_err("damaged binary")
            .to_string();
        assert!(err.contains("tasks") && err.contains("shape"), "{err}");
        let err = TASKS
            .get(&store, &4)
            .expect_err("damaged version 3")
            .to_string();
        assert!(err.contains("not a version 3 task record"), "{err}");
    }
}
