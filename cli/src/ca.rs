//! `ambit ca`: the mesh's certificate authority in local mode.
//!
//! `ambit ca init --dir DIR` makes a CA and writes `DIR/ca.pem` (the root
//! every agent trusts) and `DIR/ca-key.pem` (the key the local agent signs
//! its pods' certificates with).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};
use mesh_core::{
    ca::{self, CaError, CertificateAuthority},
    identity::DEFAULT_TRUST_DOMAIN,
};
use serde::Serialize;

use crate::table::Output;

/// Longest `--validity-days` accepted: a hundred years.
const MAX_VALIDITY_DAYS: u32 = 36_500;
const DAY: Duration = Duration::from_hours(24);

/// Why an `ambit ca` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CaCommandError {
    /// The CA files exist and `--force` was not given.
    #[error(
        "refusing to overwrite {}: remove them, choose another --dir, or pass --force to replace them",
        display_paths(.paths)
    )]
    Exists {
        /// The files that exist.
        paths: Vec<PathBuf>,
    },
    /// Generating or writing the CA failed.
    #[error(transparent)]
    Ca(CaError),
}

/// `ambit ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA: writes DIR/ca.pem (the root to trust) and DIR/ca-key.pem
    /// (its key, mode 0600).
    Init(InitArgs),
}

/// Arguments of `ambit ca init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory for ca.pem and ca-key.pem; created if missing.
    #[arg(long)]
    pub dir: PathBuf,
    /// Trust domain of the identities the CA will sign.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// How long the CA certificate is valid, in days.
    #[arg(
        long,
        default_value_t = 3650,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_VALIDITY_DAYS))
    )]
    pub validity_days: u32,
    /// Replace ca.pem and ca-key.pem if they exist. Certificates signed by
    /// the old CA stop verifying once agents trust only the new one.
    #[arg(long)]
    pub force: bool,
}

/// What `ambit ca init` made.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Initialized {
    /// The CA certificate file.
    pub certificate: PathBuf,
    /// The CA key file.
    pub key: PathBuf,
    /// The trust domain.
    pub trust_domain: String,
    /// SHA-256 fingerprint of the CA certificate.
    pub sha256_fingerprint: String,
}

/// Generates a CA and writes its files.
pub fn init(args: &InitArgs) -> Result<Initialized, CaCommandError> {
    let validity = DAY * args.validity_days;
    let authority =
        CertificateAuthority::generate(&args.trust_domain, validity).map_err(CaCommandError::Ca)?;
    let written = if args.force {
        authority.write_replacing(&args.dir)
    } else {
        authority.write(&args.dir)
    };
    let (certificate, key) = written.map_err(|error| match error {
        CaError::Exists { paths } => CaCommandError::Exists { paths },
        error => CaCommandError::Ca(error),
    })?;
    Ok(Initialized {
        certificate,
        key,
        trust_domain: args.trust_domain.clone(),
        sha256_fingerprint: ca::sha256_fingerprint(authority.certificate_der()),
    })
}

// === impl Initialized ===

impl Initialized {
    /// The report in the chosen output format.
    #[must_use]
    pub fn render(&self, output: Output) -> String {
        match output {
            Output::Table => format!(
                "CA certificate       {}\n\
                 CA key               {} (keep it secret: it signs every workload certificate)\n\
                 trust domain         {}\n\
                 SHA-256 fingerprint  {}\n",
                self.certificate.display(),
                self.key.display(),
                self.trust_domain,
                self.sha256_fingerprint
            ),
            Output::Json => serde_json::to_string_pretty(self).unwrap_or_default() + "\n",
            Output::Yaml => serde_yaml::to_string(self).unwrap_or_default(),
        }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| Path::display(path).to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> InitArgs {
        InitArgs {
            dir: dir.to_owned(),
            trust_domain: "example.org".into(),
            validity_days: 30,
            force: false,
        }
    }

    #[test]
    fn init_writes_a_ca_that_loads_back() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("ca");
        let done = init(&args(&dir)).unwrap();
        assert_eq!(done.certificate, dir.join("ca.pem"));
        assert_eq!(done.key, dir.join("ca-key.pem"));
        let loaded = CertificateAuthority::load(&done.certificate, &done.key).unwrap();
        assert_eq!(
            ca::sha256_fingerprint(loaded.certificate_der()),
            done.sha256_fingerprint
        );
        let not_after = ca::not_after_of(loaded.certificate_der()).unwrap();
        let left = not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left <= DAY * 30 && left + DAY > DAY * 30, "{left:?}");
        let text = done.render(Output::Table);
        assert!(
            text.contains(&done.certificate.display().to_string()),
            "{text}"
        );
        assert!(text.contains(&done.sha256_fingerprint), "{text}");
        let json: serde_json::Value = serde_json::from_str(&done.render(Output::Json)).unwrap();
        assert_eq!(json["trustDomain"], "example.org");
    }

    #[test]
    fn init_refuses_to_overwrite_unless_forced() {
        let temp = tempfile::tempdir().unwrap();
        let first = init(&args(temp.path())).unwrap();
        let error = init(&args(temp.path())).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, CaCommandError::Exists { .. }), "{message}");
        assert!(
            message.contains(&first.certificate.display().to_string()),
            "{message}"
        );
        assert!(message.contains("--force"), "{message}");
        let kept = CertificateAuthority::load(&first.certificate, &first.key).unwrap();
        assert_eq!(
            ca::sha256_fingerprint(kept.certificate_der()),
            first.sha256_fingerprint
        );

        let forced = init(&InitArgs {
            force: true,
            ..args(temp.path())
        })
        .unwrap();
        assert_ne!(forced.sha256_fingerprint, first.sha256_fingerprint);
        let replaced = CertificateAuthority::load(&forced.certificate, &forced.key).unwrap();
        assert_eq!(
            ca::sha256_fingerprint(replaced.certificate_der()),
            forced.sha256_fingerprint
        );
    }

    #[test]
    fn init_rejects_a_bad_trust_domain() {
        let temp = tempfile::tempdir().unwrap();
        let error = init(&InitArgs {
            trust_domain: "Not Valid".into(),
            ..args(temp.path())
        })
        .unwrap_err();
        assert!(error.to_string().contains("\"Not Valid\""), "{error}");
        assert!(!temp.path().join("ca.pem").exists());
    }
}
