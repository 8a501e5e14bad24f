//! Reading and writing the CA's PEM files.

use std::{
    fs::{self, OpenOptions, Permissions},
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use rcgen::{KeyPair, SigningKey as _};
use rustls_pki_types::{
    CertificateDer, PrivatePkcs8KeyDer,
    pem::{self as pki_pem, PemObject as _},
};

use super::{CA_CERT_FILE, CA_KEY_FILE, CaError};

/// Writes the CA's two files into `dir`, creating it; refuses before
/// writing anything if either exists, unless `replace`.
pub(super) fn write_ca_files(
    dir: &Path,
    certificate_pem: &str,
    key_pem: &str,
    replace: bool,
) -> Result<(PathBuf, PathBuf), CaError> {
    fs::create_dir_all(dir).map_err(|source| CaError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !replace {
        // symlink_metadata, so a dangling symlink counts as existing too.
        let existing: Vec<PathBuf> = [&cert_path, &key_path]
            .into_iter()
            .filter(|path| path.symlink_metadata().is_ok())
            .cloned()
            .collect();
        if !existing.is_empty() {
            return Err(CaError::Exists { paths: existing });
        }
    }
    write_file(&key_path, key_pem.as_bytes(), 0o600, replace)?;
    write_file(&cert_path, certificate_pem.as_bytes(), 0o644, replace)?;
    Ok((cert_path, key_path))
}

pub(super) fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, CaError> {
    fs::read(path).map_err(|source| CaError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

pub(super) fn first_certificate(
    path: &Path,
    text: &[u8],
) -> Result<CertificateDer<'static>, CaError> {
    match CertificateDer::pem_slice_iter(text).next() {
        Some(Ok(certificate)) => Ok(certificate),
        Some(Err(error)) => Err(CaError::NoCertificate {
            path: path.to_owned(),
            reason: error.to_string(),
        }),
        None => Err(CaError::NoCertificate {
            path: path.to_owned(),
            reason: "no CERTIFICATE block found".into(),
        }),
    }
}

/// How to turn a SEC1 or PKCS#1 key file into the PKCS#8 one the CA loads.
const TO_PKCS8: &str = "convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pkcs8`";

pub(super) fn load_key(path: &Path, text: &[u8]) -> Result<KeyPair, CaError> {
    let bad_key = |reason: String| CaError::BadKey {
        path: path.to_owned(),
        reason,
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(text).map_err(|error| match error {
        pki_pem::Error::NoItemsFound if text.windows(14).any(|w| w == b"EC PRIVATE KEY") => {
            bad_key(format!(
                "it holds a SEC1 \"EC PRIVATE KEY\", not PKCS#8 ({TO_PKCS8})"
            ))
        }
        pki_pem::Error::NoItemsFound if text.windows(15).any(|w| w == b"RSA PRIVATE KEY") => {
            bad_key(format!(
                "it holds a PKCS#1 \"RSA PRIVATE KEY\", not PKCS#8 ({TO_PKCS8})"
            ))
        }
        pki_pem::Error::NoItemsFound => bad_key("no PRIVATE KEY block found".into()),
        error => bad_key(error.to_string()),
    })?;
    let key = KeyPair::try_from(&der).map_err(|error| {
        bad_key(format!(
            "{error} (supported CA keys: RSA of 2048 to 8192 bits, ECDSA P-256 or P-384, Ed25519)"
        ))
    })?;
    // An RSA key whose private half is damaged (its CRT parameters) still
    // loads, and its public half still matches the certificate: it fails
    // every signature instead. A trial signature (which ring checks
    // against the public key) finds it here, so that a broken CA Secret is
    // refused and the last good CA keeps signing.
    key.sign(b"ambit CA key check")
        .map_err(|error| CaError::KeyCannotSign {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
    Ok(key)
}

fn write_file(path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<(), CaError> {
    let write_error = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            CaError::Exists {
                paths: vec![path.to_owned()],
            }
        } else {
            write_error(source)
        }
    })?;
    // The mode above applies only to a new file and is narrowed by the umask;
    // set it outright so a replaced key file is never left readable by others.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

pub(super) fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}

pub(super) fn certificate_pem(der: &CertificateDer<'_>) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.as_ref()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
