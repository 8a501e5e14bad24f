//! Network namespaces: opening a pod's namespace and running code inside it.
//!
//! The agent stays in its own (the node's) network namespace. Sockets that
//! must live in a pod, its listeners and its upstream connections, are
//! created by briefly switching one thread into the pod's namespace; a socket
//! keeps the namespace it was created in for its whole life.

use std::{
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::sys;

/// Errors opening or entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path could not be opened.
    #[error(
        "cannot open network namespace {path}: {source} (does the pod's netns exist? check the netns path)"
    )]
    Open {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The path exists but is not a network namespace.
    #[error(
        "{path} is not a network namespace (expected a file like /run/netns/NAME or /proc/PID/ns/net)"
    )]
    NotNetns {
        /// The path.
        path: PathBuf,
    },
    /// `setns` failed.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The worker thread that entered the namespace died.
    #[error("the worker thread for network namespace {path} panicked")]
    WorkerPanicked {
        /// The path.
        path: PathBuf,
    },
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

/// Creates sockets inside one network namespace from any thread, returning
/// the thread to the agent's own namespace afterwards.
#[derive(Clone, Debug)]
pub struct NetnsSwitch {
    target: Arc<Netns>,
    home: Arc<Netns>,
}

// === impl Netns ===

impl Netns {
    /// Opens the network namespace at `path`.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        match sys::is_network_namespace(file.as_fd()) {
            Ok(true) => Ok(Self {
                file,
                path: path.to_owned(),
            }),
            Ok(false) => Err(NetnsError::NotNetns {
                path: path.to_owned(),
            }),
            Err(source) => Err(NetnsError::Open {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The calling thread's current network namespace.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// The path the namespace was opened from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace file, e.g. to attach `sk_lookup` to.
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a fresh thread that has entered this namespace. For setup
    /// work that makes many calls inside the namespace (listeners, routes).
    pub fn run_on_worker<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    sys::setns_net(self.file.as_fd()).map_err(|source| NetnsError::Enter {
                        path: self.path.clone(),
                        source,
                    })?;
                    Ok(f())
                })
                .join()
                .map_err(|_| NetnsError::WorkerPanicked {
                    path: self.path.clone(),
                })?
        })
    }
}

// === impl NetnsSwitch ===

impl NetnsSwitch {
    /// A switch into `target` that returns to `home`.
    #[must_use]
    pub fn new(target: Arc<Netns>, home: Arc<Netns>) -> Self {
        Self { target, home }
    }

    /// The namespace sockets are created in.
    #[must_use]
    pub fn target(&self) -> &Netns {
        &self.target
    }

    /// Runs `f` on the calling thread inside the target namespace. `f` must
    /// not yield to other work (it runs between two `setns` calls), so keep
    /// it to socket creation.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        sys::setns_net(self.target.file.as_fd()).map_err(|source| NetnsError::Enter {
            path: self.target.path.clone(),
            source,
        })?;
        let result = f();
        if let Err(error) = sys::setns_net(self.home.file.as_fd()) {
            // A thread stranded in a pod's namespace would open the wrong
            // sockets for whatever it runs next; stopping is the only safe move.
            tracing::error!(%error, "cannot return to the agent's network namespace; aborting");
            std::process::abort();
        }
        Ok(result)
    }
}
