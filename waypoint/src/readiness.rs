//! Whether the waypoint can serve, for `/healthz/ready`: the kubelet's
//! probe decides whether the waypoint's pod is a ready endpoint, and so
//! whether agents send it clients. It is ready once it holds a certificate
//! that has not expired (its identity can serve TLS), has applied its first
//! configuration and listens for HBONE; until then readiness answers 503
//! with every reason, the last certificate failure included.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

/// What readiness waits for. Metrics and readiness are served from the
/// start; each step of the start-up (and each renewal) reports here.
#[derive(Debug, Default)]
pub struct Readiness {
    certificate: Mutex<CertificateStatus>,
    configured: AtomicBool,
    listening: AtomicBool,
}

#[derive(Debug, Default)]
struct CertificateStatus {
    /// When the certificate in use expires; `None` before the first.
    expires_at: Option<SystemTime>,
    /// Why the last attempt to get one failed, until one succeeds.
    last_error: Option<String>,
}

// === impl Readiness ===

impl Readiness {
    /// A certificate valid until `expires_at` is in use.
    pub fn certificate_issued(&self, expires_at: SystemTime) {
        let mut status = self.certificate_status();
        status.expires_at = Some(expires_at);
        status.last_error = None;
    }

    /// An attempt to get a certificate failed; a certificate still valid
    /// keeps the waypoint ready.
    pub fn certificate_failed(&self, error: &impl std::fmt::Display) {
        self.certificate_status().last_error = Some(error.to_string());
    }

    /// The first configuration has been applied.
    pub fn configuration_applied(&self) {
        self.configured.store(true, Ordering::Relaxed);
    }

    /// The HBONE listener is up and its connections are served.
    pub fn listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready at `now`, else every reason it is not.
    pub fn check(&self, now: SystemTime) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        {
            let status = self.certificate_status();
            let failure = status
                .last_error
                .as_deref()
                .map_or_else(String::new, |error| format!(": {error}"));
            match status.expires_at {
                None => reasons.push(format!("no certificate yet{failure}")),
                Some(expires_at) if expires_at <= now => {
                    reasons.push(format!("the certificate has expired{failure}"));
                }
                Some(_) => {}
            }
        }
        if !self.configured.load(Ordering::Relaxed) {
            reasons.push("the configuration has not been applied yet".to_owned());
        }
        if !self.listening.load(Ordering::Relaxed) {
            reasons.push("HBONE is not served yet".to_owned());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn certificate_status(&self) -> std::sync::MutexGuard<'_, CertificateStatus> {
        self.certificate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::Readiness;

    #[test]
    fn ready_once_certified_configured_and_listening() {
        let now = SystemTime::now();
        let readiness = Readiness::default();
        assert_eq!(
            readiness.check(now),
            Err(vec![
                "no certificate yet".to_owned(),
                "the configuration has not been applied yet".to_owned(),
                "HBONE is not served yet".to_owned(),
            ])
        );
        readiness.certificate_failed(&"the controller refused");
        readiness.configuration_applied();
        assert_eq!(
            readiness.check(now),
            Err(vec![
                "no certificate yet: the controller refused".to_owned(),
                "HBONE is not served yet".to_owned(),
            ])
        );
        readiness.certificate_issued(now + Duration::from_mins(1));
        readiness.listening();
        assert_eq!(readiness.check(now), Ok(()));
    }

    #[test]
    fn a_failed_renewal_matters_only_once_the_certificate_expires() {
        let now = SystemTime::now();
        let readiness = Readiness::default();
        readiness.configuration_applied();
        readiness.listening();
        readiness.certificate_issued(now + Duration::from_mins(1));
        readiness.certificate_failed(&"the controller is unreachable");
        assert_eq!(readiness.check(now), Ok(()));
        assert_eq!(
            readiness.check(now + Duration::from_mins(1)),
            Err(vec![
                "the certificate has expired: the controller is unreachable".to_owned()
            ])
        );
        readiness.certificate_issued(now + Duration::from_mins(2));
        assert_eq!(readiness.check(now + Duration::from_mins(1)), Ok(()));
    }
}
