//! An [`ObjectStore`] in memory, for tests: it can be taken down, counts its calls, and keeps
//! what S3 keeps for the writer claim's compare-and-swap (an ETag per write, the time of the
//! write and a clock of its own that tests move).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};

use super::{Condition, Fetched, Listed, ListedObject, ObjectError, ObjectStore, Put, Swap};

#[derive(Clone, Debug, Default)]
pub struct MemoryObjects {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    objects: Mutex<BTreeMap<String, Stored>>,
    /// The store's clock: the real one, moved by `advance_clock`.
    skew: Mutex<SignedDuration>,
    writes: AtomicUsize,
    down: AtomicBool,
    refuse_puts: AtomicBool,
    puts: AtomicUsize,
    gets: AtomicUsize,
    lists: AtomicUsize,
}

#[derive(Clone, Debug)]
struct Stored {
    body: Vec<u8>,
    etag: String,
    written: Timestamp,
}

impl MemoryObjects {
    pub fn new() -> Self {
        MemoryObjects::default()
    }

    /// While down, every call fails with `ServiceUnavailable`.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// While set, write-once puts fail with `AccessDenied` (reads and the claim still work).
    pub fn set_refuse_puts(&self, refuse: bool) {
        self.inner.refuse_puts.store(refuse, Ordering::SeqCst);
    }

    /// Moves the store's clock (by which the age of an object is judged) forward.
    pub fn advance_clock(&self, by: SignedDuration) {
        let mut skew = self.inner.skew.lock().unwrap_or_else(|p| p.into_inner());
        *skew = skew.saturating_add(by);
    }

    /// The objects now (a copy).
    pub fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        self.lock()
            .iter()
            .map(|(key, stored)| (key.clone(), stored.body.clone()))
            .collect()
    }

    /// Replaces an object's body (tampering, in tests): a new ETag, written now.
    pub fn overwrite(&self, key: &str, body: Vec<u8>) {
        let stored = self.stored(body);
        self.lock().insert(key.to_owned(), stored);
    }

    /// (puts, gets, lists) so far.
    pub fn calls(&self) -> (usize, usize, usize) {
        (
            self.inner.puts.load(Ordering::SeqCst),
            self.inner.gets.load(Ordering::SeqCst),
            self.inner.lists.load(Ordering::SeqCst),
        )
    }

    fn now(&self) -> Timestamp {
        let skew = *self.inner.skew.lock().unwrap_or_else(|p| p.into_inner());
        Timestamp::now()
            .saturating_add(skew)
            .unwrap_or(Timestamp::MAX)
    }

    fn stored(&self, body: Vec<u8>) -> Stored {
        let n = self.inner.writes.fetch_add(1, Ordering::SeqCst);
        Stored {
            body,
            etag: format!("\"etag-{n}\""),
            written: self.now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        self.inner.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, operation: &'static str, counter: &AtomicUsize) -> Result<(), ObjectError> {
        counter.fetch_add(1, Ordering::SeqCst);
        if self.inner.down.load(Ordering::SeqCst) {
            return Err(ObjectError {
                operation,
                code: "ServiceUnavailable".to_owned(),
                message: "the test took the store down".to_owned(),
            });
        }
        Ok(())
    }
}

impl ObjectStore for MemoryObjects {
    fn put_new<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<Put, ObjectError>> {
        Box::pin(async move {
            self.check("PutObject", &self.inner.puts)?;
            if self.inner.refuse_puts.load(Ordering::SeqCst) {
                return Err(ObjectError {
                    operation: "PutObject",
                    code: "AccessDenied".to_owned(),
                    message: "the test refused the write".to_owned(),
                });
            }
            let stored = self.stored(body);
            let mut objects = self.lock();
            if objects.contains_key(key) {
                return Ok(Put::Exists);
            }
            objects.insert(key.to_owned(), stored);
            Ok(Put::Created)
        })
    }

    fn put_if<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Swap, ObjectError>> {
        Box::pin(async move {
            self.check("PutObject", &self.inner.puts)?;
            // As a request in flight: another task may write first.
            tokio::task::yield_now().await;
            let stored = self.stored(body);
            let mut objects = self.lock();
            let holds = match (&condition, objects.get(key)) {
                (Condition::Absent, current) => current.is_none(),
                (Condition::Unchanged(etag), Some(current)) => current.etag == *etag,
                (Condition::Unchanged(_), None) => false,
            };
            if !holds {
                return Ok(Swap::Lost);
            }
            let etag = stored.etag.clone();
            objects.insert(key.to_owned(), stored);
            Ok(Swap::Written(Some(etag)))
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Option<Fetched>, ObjectError>> {
        Box::pin(async move {
            self.check("GetObject", &self.inner.gets)?;
            let now = self.now();
            let fetched = self.lock().get(key).map(|stored| Fetched {
                body: (stored.body.len() <= max_bytes).then(|| stored.body.clone()),
                etag: Some(stored.etag.clone()),
                age: Some(now.duration_since(stored.written)),
            });
            // As an answer on its way: another task may write before it arrives.
            tokio::task::yield_now().await;
            Ok(fetched)
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        max_objects: usize,
    ) -> BoxFuture<'a, Result<Listed, ObjectError>> {
        Box::pin(async move {
            self.check("ListObjectsV2", &self.inner.lists)?;
            let objects = self.lock();
            let mut matching = objects.iter().filter(|(k, _)| k.starts_with(prefix));
            let listed = matching
                .by_ref()
                .take(max_objects)
                .map(|(key, stored)| ListedObject {
                    key: key.clone(),
                    size: stored.body.len() as u64,
                })
                .collect();
            Ok(Listed {
                objects: listed,
                more: matching.next().is_some(),
            })
        })
    }
}
