//! Running code inside one of the test bed's network namespaces from the test
//! process itself, without starting a program.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// Runs `f` on a short-lived thread that has entered the network namespace at
/// `netns_path` (for example [`Pod::netns_path`](crate::Pod::netns_path)).
///
/// Sockets created inside `f` stay in that namespace after it returns, so a
/// test can bind a listener inside a node and serve it from its own runtime,
/// for example a fake Kubernetes API server that the node agent reaches.
pub fn run_in_netns<T: Send>(netns_path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let netns = File::open(netns_path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // Only this thread moves; the test's other threads stay put.
                setns(&netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Writes sysctls (`"net.ipv4.ip_forward"`, `"1"`) inside a network namespace.
/// `/proc/sys/net` shows the namespace of the thread that opens it.
pub(crate) fn write_sysctls(netns_path: &Path, settings: &[(&str, &str)]) -> io::Result<()> {
    run_in_netns(netns_path, || {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!(
                        "cannot set sysctl {key}={value} ({}): {error}",
                        path.display()
                    ),
                )
            })?;
        }
        Ok(())
    })?
}
