//! Kernel TLS (kTLS) on TCP sockets, for tests that ask what the kernel
//! offers: the `tls` upper-layer protocol (`TCP_ULP`) and TLS 1.3 record
//! keys for sending (`TLS_TX`) and receiving (`TLS_RX`).
//!
//! The keys are fixed test values, the same for every socket, so a kTLS
//! receiver decrypts what a kTLS sender encrypted; nothing here is secret.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::Command;

use crate::{command, sys};

/// Bytes of a TLS record header: content type, legacy version, length.
pub const RECORD_HEADER_LEN: usize = 5;
/// The content type of every TLS 1.3 record on the wire, `application_data`
/// (the real type is the last byte of the encrypted payload).
pub const APPLICATION_DATA: u8 = 0x17;
/// The legacy version every TLS 1.3 record header carries (TLS 1.2's 3.3).
pub const LEGACY_RECORD_VERSION: [u8; 2] = [0x03, 0x03];
/// The AEAD tag after each record's ciphertext, for every [`Cipher`].
pub const TAG_LEN: usize = 16;

/// The TLS 1.3 ciphers (AEADs) a test may ask the kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// `TLS_AES_128_GCM_SHA256`'s record protection.
    AesGcm128,
    /// `TLS_AES_256_GCM_SHA384`'s record protection.
    AesGcm256,
    /// `TLS_CHACHA20_POLY1305_SHA256`'s record protection.
    ChaCha20Poly1305,
}

/// Which half of a socket the keys protect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `TLS_TX`: the kernel encrypts what the application writes.
    Send,
    /// `TLS_RX`: the kernel decrypts records before the application reads.
    Receive,
}

/// Fixed test keying material, long enough for every cipher.
const KEY: [u8; 32] = *b"ambit kTLS test key, not secret!";
const IV: [u8; 12] = *b"ambit-ktlsiv";
const REC_SEQ: [u8; 8] = [0; 8];

/// Runs `modprobe tls`; the error is its message, for a skip. A kernel with TLS built in, or one that loads the module
/// on demand, may offer kTLS even when this fails.
pub fn load_module() -> Result<(), String> {
    let mut modprobe = Command::new("modprobe");
    modprobe.arg("tls");
    let output = command::output_with_timeout(modprobe, command::ONE_SHOT_TIMEOUT)?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        Err(format!(
            "modprobe tls: {}",
            stderr.strip_prefix("modprobe: ").unwrap_or(stderr)
        ))
    }
}

/// Turns `stream` into a kTLS socket (`setsockopt(SOL_TCP, TCP_ULP, "tls")`);
/// it must be connected. Fails with `ENOENT` when the kernel has no `tls`.
pub fn attach_ulp(stream: &TcpStream) -> io::Result<()> {
    sys::set_socket_option(stream.as_fd(), libc::SOL_TCP, libc::TCP_ULP, b"tls")
}

/// Gives a kTLS socket (see [`attach_ulp`]) the TLS 1.3 keys of `cipher` for
/// `direction`, with the record sequence starting at 0.
pub fn set_keys(stream: &TcpStream, direction: Direction, cipher: Cipher) -> io::Result<()> {
    let name = match direction {
        Direction::Send => libc::TLS_TX,
        Direction::Receive => libc::TLS_RX,
    };
    let socket = stream.as_fd();
    match cipher {
        Cipher::AesGcm128 => {
            let info = libc::tls12_crypto_info_aes_gcm_128 {
                info: cipher.info(),
                iv: prefix(&IV[4..]),
                key: prefix(&KEY),
                salt: prefix(&IV),
                rec_seq: REC_SEQ,
            };
            sys::set_socket_option(socket, libc::SOL_TLS, name, &info)
        }
        Cipher::AesGcm256 => {
            let info = libc::tls12_crypto_info_aes_gcm_256 {
                info: cipher.info(),
                iv: prefix(&IV[4..]),
                key: prefix(&KEY),
                salt: prefix(&IV),
                rec_seq: REC_SEQ,
            };
            sys::set_socket_option(socket, libc::SOL_TLS, name, &info)
        }
        Cipher::ChaCha20Poly1305 => {
            let info = libc::tls12_crypto_info_chacha20_poly1305 {
                info: cipher.info(),
                iv: IV,
                key: KEY,
                salt: [],
                rec_seq: REC_SEQ,
            };
            sys::set_socket_option(socket, libc::SOL_TLS, name, &info)
        }
    }
}

/// The first `N` bytes of `bytes`.
fn prefix<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes[..N]
        .try_into()
        .expect("the test key material is long enough for every cipher")
}

// === impl Cipher ===

impl Cipher {
    /// Every cipher, the one every kTLS kernel has first.
    pub const ALL: [Self; 3] = [Self::AesGcm128, Self::AesGcm256, Self::ChaCha20Poly1305];

    /// The name for reports: `AES-GCM-128`, `AES-GCM-256`, `ChaCha20-Poly1305`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::AesGcm128 => "AES-GCM-128",
            Self::AesGcm256 => "AES-GCM-256",
            Self::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }

    fn info(self) -> libc::tls_crypto_info {
        let cipher_type = match self {
            Self::AesGcm128 => libc::TLS_CIPHER_AES_GCM_128,
            Self::AesGcm256 => libc::TLS_CIPHER_AES_GCM_256,
            Self::ChaCha20Poly1305 => libc::TLS_CIPHER_CHACHA20_POLY1305,
        };
        libc::tls_crypto_info {
            version: libc::TLS_1_3_VERSION,
            cipher_type,
        }
    }
}
