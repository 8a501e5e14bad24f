//! Running `kube` clients from the test process inside a test bed network
//! namespace, where the fake API server (and every other test address) is
//! reachable; the test process itself stays in the machine's namespace.

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use nix::sched::{CloneFlags, setns};

use super::FakeKubeError;
use crate::netns::run_in_netns;

/// How many worker threads a [`NetnsRuntime`] runs.
const WORKER_THREADS: usize = 2;

/// A multi-threaded tokio runtime whose every thread (workers and blocking
/// pool) lives in one network namespace, so the sockets its tasks open are
/// opened there.
///
/// ```no_run
/// # fn demo(kube: &ambit_tests::fake_kube::FakeKube, node: &ambit_tests::Node) {
/// use ambit_tests::fake_kube::NetnsRuntime;
/// use k8s_openapi::api::core::v1::Pod;
///
/// let runtime = NetnsRuntime::new(&node.netns_path).expect("runtime in n1");
/// let client = runtime.kube_client(kube.kube_config()).expect("client");
/// let pods = runtime.block_on(async move {
///     kube::Api::<Pod>::all(client).list(&Default::default()).await
/// });
/// # let _ = pods;
/// # }
/// ```
pub struct NetnsRuntime {
    runtime: tokio::runtime::Runtime,
}

// === impl NetnsRuntime ===

impl NetnsRuntime {
    /// Builds a runtime whose threads enter the network namespace at
    /// `netns_path` (e.g. [`Node::netns_path`](crate::Node::netns_path)).
    pub fn new(netns_path: &Path) -> Result<Self, FakeKubeError> {
        let netns_error = |source| FakeKubeError::Netns {
            path: netns_path.to_owned(),
            source,
        };
        let netns = Arc::new(File::open(netns_path).map_err(netns_error)?);
        // Fail here, with a message, rather than in a thread start hook.
        run_in_netns(netns_path, || ()).map_err(netns_error)?;
        let path = netns_path.display().to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("netns-runtime")
            .enable_all()
            .on_thread_start(move || {
                if let Err(error) = setns(&*netns, CloneFlags::CLONE_NEWNET) {
                    // A thread left in the machine's namespace would send
                    // traffic there: better no thread at all.
                    eprintln!("ambit-tests: a runtime thread cannot enter {path}: {error}");
                    std::process::abort();
                }
            })
            .build()
            .map_err(FakeKubeError::Runtime)?;
        Ok(Self { runtime })
    }

    /// Runs `future` to completion on the runtime's threads (never on the
    /// calling thread, which is outside the namespace). A panic in `future`
    /// resumes on the caller.
    pub fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.runtime.spawn(future);
        match self.runtime.block_on(task) {
            Ok(output) => output,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("the task was cancelled: {error}"),
            },
        }
    }

    /// A `kube::Client` bound to this runtime (its background tasks run
    /// here), for example with [`FakeKube::kube_config`](super::FakeKube::kube_config).
    pub fn kube_client(&self, config: kube::Config) -> Result<kube::Client, FakeKubeError> {
        let url = config.cluster_url.to_string();
        let _entered = self.runtime.enter();
        kube::Client::try_from(config).map_err(|source| FakeKubeError::Client { url, source })
    }

    /// The runtime's handle, to spawn long-running tasks such as watchers.
    #[must_use]
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }
}
