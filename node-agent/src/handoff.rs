//! Handing a running agent's pods to its successor without refusing a
//! connection, as Envoy's hot restart and `HAProxy`'s seamless reload do: the
//! listener sockets themselves change hands.
//!
//! 1. The active agent holds an exclusive lock (`<socket>.lock`, `flock`)
//!    and listens on a unix seqpacket socket (`--handoff-socket`).
//! 2. A new agent connects and says hello with its pin layout version. A
//!    different version is refused, naming both; nothing changes.
//! 3. The active agent sends every enrolled pod's listener sockets
//!    (`SCM_RIGHTS`), one message per pod, then `done`.
//! 4. The new agent enrolls its pods with those very sockets (the
//!    `sk_lookup` sock hash and the captured connects already point at
//!    them), starts accepting and says `taken`. Both processes now accept
//!    from the same sockets: no connection is refused or reset.
//! 5. The active agent stops accepting, asks its HBONE peers to move to the
//!    new agent (`GOAWAY`), closes the handoff socket, releases the lock
//!    and says `released`; it then drains its established connections, up
//!    to `--drain-timeout-secs`.
//! 6. The new agent takes the lock and listens on the socket: it is the
//!    active agent now.
//!
//! An agent that finds nobody answering on the socket takes the lock and
//! listens. One that finds the lock held but nobody answering (another
//! agent is starting or handing over) says so and waits: exactly one agent
//! serves a node's pods.

use std::{
    collections::HashMap,
    fs::File,
    io::{IoSlice, IoSliceMut},
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    sys::{
        socket::{
            AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
            SockType, UnixAddr, accept, bind, connect, listen, recvmsg, sendmsg, setsockopt,
            socket, sockopt,
        },
        time::{TimeVal, TimeValLike as _},
    },
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// The largest message (JSON) on the handoff socket.
const MAX_MESSAGE: usize = 64 * 1024;
/// The most sockets one message carries (a pod has at most six listeners).
const MAX_FDS: usize = 16;
/// How long either side waits for the other's next message, except for
/// `taken`, which waits for the successor to enroll every pod.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the active agent waits for its successor to take the pods over.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_mins(2);
/// How long a successor waits for the lock after the handoff.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two attempts to reach or become the active agent.
const RETRY: Duration = Duration::from_millis(200);

/// Why a handoff could not be done.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The socket could not be created, reached or served.
    #[error(
        "cannot use the handoff socket {path}: {source} (check --handoff-socket and that its directory is writable)"
    )]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// The error.
        source: Errno,
    },
    /// The lock file could not be opened or taken.
    #[error("cannot use the active-agent lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The running agent refused to hand over.
    #[error("the running agent refused to hand its pods over: {0}")]
    Refused(String),
    /// The other side broke the protocol or went away.
    #[error("the handoff broke off: {0}")]
    Protocol(String),
}

/// One message of the handoff protocol.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
enum Message {
    /// Successor → active: who asks, with which pin layout.
    Hello { layout: u32, pid: u32 },
    /// Active → successor: one pod's listeners, in `roles` order.
    Pod { netns_cookie: u64, roles: Vec<Role> },
    /// Active → successor: every pod was sent.
    Done { pods: usize },
    /// Active → successor: no handoff, and why.
    Refused { reason: String },
    /// Successor → active: it accepts on every pod's listeners.
    Taken,
    /// Active → successor: it stopped accepting and let go of the lock.
    Released,
}

/// What a handed-over listener is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The outbound listener (15001).
    Outbound,
    /// The inbound plaintext listener (15006).
    Inbound,
    /// The HBONE listener (15008).
    Hbone,
}

/// One enrolled pod's listener sockets, kept to be handed over.
#[derive(Debug, Default)]
pub struct PodListeners {
    /// The pod's network namespace cookie.
    pub netns_cookie: u64,
    /// Outbound listeners.
    pub outbound: Vec<OwnedFd>,
    /// Inbound plaintext listeners.
    pub inbound: Vec<OwnedFd>,
    /// HBONE listeners.
    pub hbone: Vec<OwnedFd>,
}

/// A request from the handoff thread to the agent's reconciler.
pub enum Request {
    /// Copies of every enrolled pod's listeners.
    Listeners(oneshot::Sender<Vec<PodListeners>>),
    /// The successor accepts on them: stop accepting, stop reconciling,
    /// and answer once done.
    Release(oneshot::Sender<()>),
}

/// How this agent starts.
pub enum Start {
    /// No agent was running: this one is active.
    Active(Active),
    /// An agent was running and handed its pods' listeners over.
    Successor(Successor),
}

/// The active agent's end: the lock and the listening socket.
pub struct Active {
    path: PathBuf,
    lock: Flock<File>,
    listener: OwnedFd,
}

/// A successor holding the listeners its predecessor handed over, until it
/// has taken the pods over ([`Successor::complete`]).
pub struct Successor {
    path: PathBuf,
    channel: Channel,
    pods: HashMap<u64, PodListeners>,
}

/// A connected handoff socket.
struct Channel(OwnedFd);

// === impl PodListeners ===

impl PodListeners {
    /// Copies of the same sockets (new descriptors).
    pub fn try_clone(&self) -> std::io::Result<Self> {
        let copy = |fds: &[OwnedFd]| -> std::io::Result<Vec<OwnedFd>> {
            fds.iter().map(OwnedFd::try_clone).collect()
        };
        Ok(Self {
            netns_cookie: self.netns_cookie,
            outbound: copy(&self.outbound)?,
            inbound: copy(&self.inbound)?,
            hbone: copy(&self.hbone)?,
        })
    }

    fn roles_and_fds(&self) -> (Vec<Role>, Vec<RawFd>) {
        let mut roles = Vec::new();
        let mut fds = Vec::new();
        for (role, list) in [
            (Role::Outbound, &self.outbound),
            (Role::Inbound, &self.inbound),
            (Role::Hbone, &self.hbone),
        ] {
            for fd in list {
                roles.push(role);
                fds.push(fd.as_raw_fd());
            }
        }
        (roles, fds)
    }

    fn from_message(
        netns_cookie: u64,
        roles: &[Role],
        fds: Vec<OwnedFd>,
    ) -> Result<Self, HandoffError> {
        if roles.len() != fds.len() {
            return Err(HandoffError::Protocol(format!(
                "pod {netns_cookie}: {} roles but {} sockets",
                roles.len(),
                fds.len()
            )));
        }
        let mut pod = Self {
            netns_cookie,
            ..Self::default()
        };
        for (role, fd) in roles.iter().zip(fds) {
            match role {
                Role::Outbound => pod.outbound.push(fd),
                Role::Inbound => pod.inbound.push(fd),
                Role::Hbone => pod.hbone.push(fd),
            }
        }
        Ok(pod)
    }
}

// === impl Start ===

impl Start {
    /// Finds the active agent on `path` and takes its pods' listeners, or
    /// becomes the active agent when none answers. Blocks while another
    /// agent holds the lock without answering (it is starting or handing
    /// over), saying so once.
    pub fn begin(path: &Path, layout: u32) -> Result<Self, HandoffError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| HandoffError::Lock {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut said_waiting = false;
        loop {
            match Channel::connect(path) {
                Ok(channel) => return Successor::hello(path, channel, layout).map(Self::Successor),
                Err(HandoffError::Socket {
                    source: Errno::ENOENT | Errno::ECONNREFUSED,
                    ..
                }) => {}
                Err(error) => return Err(error),
            }
            if let Some(lock) = try_lock(path)? {
                return Active::listen(path, lock).map(Self::Active);
            }
            if !said_waiting {
                tracing::warn!(
                    socket = %path.display(),
                    "another agent is active on this node but does not answer on the handoff socket (it is starting or handing over); waiting to take over from it"
                );
                said_waiting = true;
            }
            std::thread::sleep(RETRY);
        }
    }
}

// === impl Successor ===

impl Successor {
    fn hello(path: &Path, channel: Channel, layout: u32) -> Result<Self, HandoffError> {
        channel.send(
            &Message::Hello {
                layout,
                pid: std::process::id(),
            },
            &[],
        )?;
        let mut pods = HashMap::new();
        loop {
            match channel.recv(STEP_TIMEOUT)? {
                (
                    Message::Pod {
                        netns_cookie,
                        roles,
                    },
                    fds,
                ) => {
                    let pod = PodListeners::from_message(netns_cookie, &roles, fds)?;
                    pods.insert(netns_cookie, pod);
                }
                (Message::Done { pods: count }, _) if count == pods.len() => break,
                (Message::Done { pods: count }, _) => {
                    return Err(HandoffError::Protocol(format!(
                        "the running agent announced {count} pods but sent {}",
                        pods.len()
                    )));
                }
                (Message::Refused { reason }, _) => return Err(HandoffError::Refused(reason)),
                (other, _) => {
                    return Err(HandoffError::Protocol(format!(
                        "unexpected message {other:?}"
                    )));
                }
            }
        }
        tracing::info!(pods = pods.len(), socket = %path.display(), "the running agent handed its pods' listeners over");
        Ok(Self {
            path: path.to_owned(),
            channel,
            pods,
        })
    }

    /// The handed-over listeners, by netns cookie, for the enroller.
    pub fn take_pods(&mut self) -> HashMap<u64, PodListeners> {
        std::mem::take(&mut self.pods)
    }

    /// Tells the predecessor that the pods are taken over (this agent
    /// accepts on their listeners), waits until it has let go, and becomes
    /// the active agent.
    pub fn complete(self) -> Result<Active, HandoffError> {
        self.channel.send(&Message::Taken, &[])?;
        match self.channel.recv(STEP_TIMEOUT)? {
            (Message::Released, _) => {}
            (other, _) => {
                return Err(HandoffError::Protocol(format!(
                    "expected released, got {other:?}"
                )));
            }
        }
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            if let Some(lock) = try_lock(&self.path)? {
                return Active::listen(&self.path, lock);
            }
            if Instant::now() >= deadline {
                return Err(HandoffError::Protocol(
                    "the previous agent released the pods but still holds the lock".to_owned(),
                ));
            }
            std::thread::sleep(RETRY);
        }
    }
}

// === impl Active ===

impl Active {
    fn listen(path: &Path, lock: Flock<File>) -> Result<Self, HandoffError> {
        let socket_error = |source| HandoffError::Socket {
            path: path.to_owned(),
            source,
        };
        // Left by an agent that died: nobody answers on it (the lock is ours).
        let _ = std::fs::remove_file(path);
        let (listener, addr) = seqpacket(path)?;
        bind(listener.as_raw_fd(), &addr).map_err(socket_error)?;
        listen(&listener, Backlog::new(4).map_err(socket_error)?).map_err(socket_error)?;
        tracing::info!(socket = %path.display(), "active agent of this node; successors hand over through this socket");
        Ok(Self {
            path: path.to_owned(),
            lock,
            listener,
        })
    }

    /// Serves successors on a thread of its own until one takes the pods
    /// over: the listeners come from, and the release goes to, the
    /// reconciler through `requests`.
    pub fn serve(self, layout: u32, requests: mpsc::Sender<Request>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("ambit-handoff".to_owned())
            .spawn(move || self.serve_until_handed_over(layout, &requests))
            .map(drop)
    }

    fn serve_until_handed_over(self, layout: u32, requests: &mpsc::Sender<Request>) {
        loop {
            let channel = match accept(self.listener.as_raw_fd()) {
                Ok(fd) => Channel(crate::sys::own_new_fd(fd)),
                Err(Errno::EINTR) => continue,
                Err(error) => {
                    tracing::error!(%error, "the handoff socket failed; no successor can take over without a gap");
                    return;
                }
            };
            match Self::hand_over(&channel, layout, requests) {
                Ok(()) => {
                    // The lock and the socket go with `self`; then the
                    // successor may take them.
                    let _ = std::fs::remove_file(&self.path);
                    drop(self.listener);
                    drop(self.lock);
                    if let Err(error) = channel.send(&Message::Released, &[]) {
                        tracing::warn!(%error, "cannot tell the successor it may take the lock");
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "a handoff did not complete; this agent keeps serving its pods");
                }
            }
        }
    }

    fn hand_over(
        channel: &Channel,
        layout: u32,
        requests: &mpsc::Sender<Request>,
    ) -> Result<(), HandoffError> {
        let (pid, successor_layout) = match channel.recv(STEP_TIMEOUT)? {
            (Message::Hello { layout, pid }, _) => (pid, layout),
            (other, _) => {
                return Err(HandoffError::Protocol(format!(
                    "expected hello, got {other:?}"
                )));
            }
        };
        if successor_layout != layout {
            let reason = format!(
                "this agent's pinned maps have layout version {layout}, the new agent (pid {pid}) uses version {successor_layout}"
            );
            channel.send(
                &Message::Refused {
                    reason: reason.clone(),
                },
                &[],
            )?;
            return Err(HandoffError::Refused(reason));
        }
        tracing::info!(
            successor_pid = pid,
            "a successor asks for the pods; handing their listeners over"
        );
        let (reply, answer) = oneshot::channel();
        requests
            .blocking_send(Request::Listeners(reply))
            .map_err(|_| HandoffError::Protocol("the agent is shutting down".to_owned()))?;
        let pods = answer
            .blocking_recv()
            .map_err(|_| HandoffError::Protocol("the agent is shutting down".to_owned()))?;
        for pod in &pods {
            let (roles, fds) = pod.roles_and_fds();
            channel.send(
                &Message::Pod {
                    netns_cookie: pod.netns_cookie,
                    roles,
                },
                &fds,
            )?;
        }
        channel.send(&Message::Done { pods: pods.len() }, &[])?;
        drop(pods);
        match channel.recv(TAKE_OVER_TIMEOUT)? {
            (Message::Taken, _) => {}
            (other, _) => {
                return Err(HandoffError::Protocol(format!(
                    "expected taken, got {other:?}"
                )));
            }
        }
        let (reply, answer) = oneshot::channel();
        requests
            .blocking_send(Request::Release(reply))
            .map_err(|_| HandoffError::Protocol("the agent is shutting down".to_owned()))?;
        let _ = answer.blocking_recv();
        tracing::info!(
            successor_pid = pid,
            "the successor took the pods over; this agent stopped accepting and drains"
        );
        Ok(())
    }
}

// === impl Channel ===

impl Channel {
    fn connect(path: &Path) -> Result<Self, HandoffError> {
        let (fd, addr) = seqpacket(path)?;
        connect(fd.as_raw_fd(), &addr).map_err(|source| HandoffError::Socket {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self(fd))
    }

    fn send(&self, message: &Message, fds: &[RawFd]) -> Result<(), HandoffError> {
        let body = serde_json::to_vec(message)
            .map_err(|error| HandoffError::Protocol(error.to_string()))?;
        let iov = [IoSlice::new(&body)];
        let rights = [ControlMessage::ScmRights(fds)];
        let control: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            self.0.as_raw_fd(),
            &iov,
            control,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|error| HandoffError::Protocol(format!("send: {error}")))?;
        Ok(())
    }

    fn recv(&self, timeout: Duration) -> Result<(Message, Vec<OwnedFd>), HandoffError> {
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        setsockopt(
            &self.0,
            sockopt::ReceiveTimeout,
            &TimeVal::milliseconds(timeout_ms),
        )
        .map_err(|error| HandoffError::Protocol(format!("receive timeout: {error}")))?;
        let mut body = vec![0u8; MAX_MESSAGE];
        let mut control = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut body)];
            let received = recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|error| match error {
                Errno::EAGAIN => HandoffError::Protocol(format!(
                    "the other agent did not answer within {} s",
                    timeout.as_secs()
                )),
                other => HandoffError::Protocol(format!("receive: {other}")),
            })?;
            let mut fds = Vec::new();
            for message in received
                .cmsgs()
                .map_err(|error| HandoffError::Protocol(format!("control message: {error}")))?
            {
                if let ControlMessageOwned::ScmRights(raw) = message {
                    fds.extend(raw.into_iter().map(crate::sys::own_new_fd));
                }
            }
            (received.bytes, fds)
        };
        if len == 0 {
            return Err(HandoffError::Protocol(
                "the other agent closed the socket".to_owned(),
            ));
        }
        let message = serde_json::from_slice(&body[..len])
            .map_err(|error| HandoffError::Protocol(format!("bad message: {error}")))?;
        Ok((message, fds))
    }
}

/// A new unix seqpacket socket and the address of `path`.
fn seqpacket(path: &Path) -> Result<(OwnedFd, UnixAddr), HandoffError> {
    let socket_error = |source| HandoffError::Socket {
        path: path.to_owned(),
        source,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(socket_error)?;
    let addr = UnixAddr::new(path).map_err(socket_error)?;
    Ok((fd, addr))
}

/// Takes the active-agent lock beside `socket`, or `None` when another
/// agent holds it.
fn try_lock(socket: &Path) -> Result<Option<Flock<File>>, HandoffError> {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| HandoffError::Lock {
            path: path.clone(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(HandoffError::Lock {
            path,
            source: errno.into(),
        }),
    }
}

#[cfg(test)]
mod tests;
