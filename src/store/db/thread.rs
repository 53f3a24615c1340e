//! The database's one owner: a dedicated thread that holds the [`State`] and runs every job sent to it,
//! in order. Async code awaits a job's result without blocking a runtime worker, so a slow disk or a
//! long commit can never freeze the watchdog; a job is never interrupted halfway (a transaction is
//! committed whole or not at all).
use super::{State, StateError};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

type Job = Box<dyn FnOnce(&mut State) + Send>;

/// A handle on the database thread. Cheap to clone; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Job>,
    path: PathBuf,
}

impl Db {
    /// Move `state` onto its own thread.
    pub fn spawn(state: State) -> Result<Db, StateError> {
        let path = state.path().to_path_buf();
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("mountd-db".into())
            .spawn(move || {
                let mut state = state;
                while let Ok(job) = rx.recv() {
                    job(&mut state);
                }
            })
            .map_err(|source| StateError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Db { tx, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the database thread and await its result.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StateError> + Send + 'static,
        F: FnOnce(&mut State) -> Result<T, E> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |st| {
            let _ = done.send(f(st));
        });
        let gone = || StateError::Gone {
            path: self.path.clone(),
        };
        self.tx.send(job).map_err(|_| E::from(gone()))?;
        result.await.map_err(|_| E::from(gone()))?
    }

    /// Run `f` on the database thread from synchronous code (not from inside the async runtime).
    pub fn run_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StateError> + Send + 'static,
        F: FnOnce(&mut State) -> Result<T, E> + Send + 'static,
    {
        let (done, result) = mpsc::channel();
        let job: Job = Box::new(move |st| {
            let _ = done.send(f(st));
        });
        let gone = || StateError::Gone {
            path: self.path.clone(),
        };
        self.tx.send(job).map_err(|_| E::from(gone()))?;
        result.recv().map_err(|_| E::from(gone()))?
    }
}
