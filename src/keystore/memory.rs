//! An [`ObjectStore`] in memory, for tests: it can be taken down, and counts its calls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::{ObjectError, ObjectStore, Put};

#[derive(Clone, Debug, Default)]
pub struct MemoryObjects {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
    down: AtomicBool,
    refuse_puts: AtomicBool,
    puts: AtomicUsize,
    gets: AtomicUsize,
    lists: AtomicUsize,
}

impl MemoryObjects {
    pub fn new() -> Self {
        MemoryObjects::default()
    }

    /// While down, every call fails with `ServiceUnavailable`.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// While set, conditional puts fail with `AccessDenied` (reads still work).
    pub fn set_refuse_puts(&self, refuse: bool) {
        self.inner.refuse_puts.store(refuse, Ordering::SeqCst);
    }

    /// The objects now (a copy).
    pub fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        self.lock().clone()
    }

    /// Replaces an object's body (tampering, in tests).
    pub fn overwrite(&self, key: &str, body: Vec<u8>) {
        self.lock().insert(key.to_owned(), body);
    }

    /// (puts, gets, lists) so far.
    pub fn calls(&self) -> (usize, usize, usize) {
        (
            self.inner.puts.load(Ordering::SeqCst),
            self.inner.gets.load(Ordering::SeqCst),
            self.inner.lists.load(Ordering::SeqCst),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
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
            let mut objects = self.lock();
            if objects.contains_key(key) {
                return Ok(Put::Exists);
            }
            objects.insert(key.to_owned(), body);
            Ok(Put::Created)
        })
    }

    fn put<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(async move {
            self.check("PutObject", &self.inner.puts)?;
            self.lock().insert(key.to_owned(), body);
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, ObjectError>> {
        Box::pin(async move {
            self.check("GetObject", &self.inner.gets)?;
            Ok(self.lock().get(key).cloned())
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, ObjectError>> {
        Box::pin(async move {
            self.check("ListObjectsV2", &self.inner.lists)?;
            Ok(self
                .lock()
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        })
    }
}
