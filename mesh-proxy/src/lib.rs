//! ambit's one HBONE implementation, used by the node agent and the
//! waypoint alike: TCP carried in HTTP/2 CONNECT streams over mutual TLS.
//!
//! Modules, bottom first; each imports only from those above it:
//!
//! 1. [`sys`]: the one unsafe system call (`recv` into spare capacity).
//! 2. [`hbone`]: the vocabulary: port, limits and windows, [`HboneError`],
//!    the TLS + HTTP/2 handshakes of both sides, the CONNECT authority.
//! 3. [`shared_handshake`]: a handshake several streams wait on, with no
//!    lock held across it.
//! 4. [`accept`]: the accept loop with back-off, for every listener.
//! 5. [`copy`]: reading sockets without idle buffers; TCP-to-TCP pumping.
//! 6. [`relay`]: a TCP connection relayed to a CONNECT stream and back.
//! 7. [`h2io`]: a CONNECT stream as a byte stream, with a lingering close.
//! 8. [`server`]: one accepted HBONE connection served, drained with
//!    `GOAWAY`.
//! 9. [`client`]: the connection pool, early data and retries of refused
//!    streams.

pub mod sys;

pub mod hbone;

pub mod shared_handshake;

pub mod accept;

pub mod copy;

pub mod relay;

pub mod h2io;

pub mod server;

pub mod client;

pub use hbone::HboneError;
