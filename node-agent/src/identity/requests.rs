//! Certificate requests to the controller, by identity: at most one under
//! way per identity, a backoff after a failure, and the answer stored when
//! it comes. A request names the identity's pods in turn until one is
//! signed: the controller refuses a pod that is gone (404, and the pod is
//! forgotten) or, for whatever reason, not allowed (403), and another pod
//! of the identity may still do.

use std::{
    sync::{Arc, Weak},
    time::Instant,
};

use mesh_core::{
    ca::{WorkloadCertificate, WorkloadKey},
    identity::SpiffeId,
    workload::PodKey,
};
use mesh_kube::controller_client::{ControllerClient, backoff};
use rustls::RootCertStore;

use super::{CertManager, IdentityError, Signer};
use crate::sync::{lock, read, write};

/// Where one identity's request stands.
#[derive(Debug)]
pub(super) struct Request {
    in_flight: bool,
    failures: u32,
    /// Why the last request failed, shown until one succeeds.
    pub(super) last_failure: Option<String>,
    /// No new request before this.
    not_before: Instant,
}

/// What a request brought back.
struct Answer {
    signed: Result<(WorkloadCertificate, WorkloadKey), String>,
    /// Pods the controller says do not exist.
    gone: Vec<PodKey>,
}

// === impl Request ===

impl Request {
    fn new(now: Instant) -> Self {
        Self {
            in_flight: false,
            failures: 0,
            last_failure: None,
            not_before: now,
        }
    }
}

// === impl CertManager ===

impl CertManager {
    /// Starts a request for `identity` unless one is under way or backing
    /// off, and says where it stands, as the error a waiting pod shows.
    pub(super) fn request(self: &Arc<Self>, identity: &SpiffeId) -> IdentityError {
        let Signer::Controller { client, runtime } = &self.signer else {
            unreachable!("only the controller is asked");
        };
        // The pods are read before the requests are locked: `release` holds
        // the pods while it clears the requests.
        let pods: Vec<PodKey> = read(&self.pods)
            .get(identity)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        let now = Instant::now();
        let mut requests = lock(&self.requests);
        let request = requests
            .entry(identity.clone())
            .or_insert_with(|| Request::new(now));
        if !request.in_flight && now >= request.not_before && !pods.is_empty() {
            request.in_flight = true;
            tracing::debug!(%identity, pods = pods.len(), "asking the controller for a certificate");
            runtime.spawn(ask(
                Arc::downgrade(self),
                client.clone(),
                self.roots(),
                identity.clone(),
                pods,
            ));
        }
        match &request.last_failure {
            Some(reason) => IdentityError::NotSigned {
                identity: Box::new(identity.clone()),
                reason: reason.clone(),
            },
            None => IdentityError::Requested {
                identity: Box::new(identity.clone()),
                address: client.address().to_owned(),
            },
        }
    }

    /// Stores what a request brought back, and wakes whoever waits.
    fn finish(&self, identity: &SpiffeId, answer: Answer) {
        if !answer.gone.is_empty() {
            let mut pods = write(&self.pods);
            if let Some(set) = pods.get_mut(identity) {
                for pod in &answer.gone {
                    set.remove(pod);
                }
                if set.is_empty() {
                    pods.remove(identity);
                }
            }
        }
        let stored = answer.signed.and_then(|(certificate, key)| {
            let rotations = read(&self.issued)
                .get(identity)
                .map_or(0, |issued| issued.rotations + 1);
            Self::certify(certificate, &key, rotations).map_err(|e| e.to_string())
        });
        match stored {
            Ok(issued) => {
                tracing::info!(
                    %identity,
                    serial = %issued.certificate.serial,
                    rotations = issued.rotations,
                    "certificate issued by the controller"
                );
                write(&self.issued).insert(identity.clone(), issued);
                lock(&self.requests).remove(identity);
            }
            Err(reason) => {
                let mut requests = lock(&self.requests);
                let request = requests
                    .entry(identity.clone())
                    .or_insert_with(|| Request::new(Instant::now()));
                request.in_flight = false;
                request.failures += 1;
                let retry_in = backoff(request.failures);
                request.not_before = Instant::now() + retry_in;
                if request.last_failure.as_ref() != Some(&reason) {
                    tracing::warn!(%identity, error = %reason, ?retry_in, "the controller did not sign the certificate; asking again with a backoff");
                }
                request.last_failure = Some(reason);
            }
        }
        self.changed.notify_one();
        self.requests_ended.send_modify(|ended| *ended += 1);
    }
}

/// One request, on the controller client's thread.
async fn ask(
    manager: Weak<CertManager>,
    client: ControllerClient,
    roots: Arc<RootCertStore>,
    identity: SpiffeId,
    pods: Vec<PodKey>,
) {
    let answer = sign(&client, roots, &identity, &pods).await;
    if let Some(manager) = manager.upgrade() {
        manager.finish(&identity, answer);
    }
}

/// A fresh key, certified by the controller for the first of `pods` it
/// accepts.
async fn sign(
    client: &ControllerClient,
    roots: Arc<RootCertStore>,
    identity: &SpiffeId,
    pods: &[PodKey],
) -> Answer {
    let mut gone = Vec::new();
    let key = match WorkloadKey::generate() {
        Ok(key) => key,
        Err(error) => {
            return Answer {
                signed: Err(error.to_string()),
                gone,
            };
        }
    };
    let csr = match key.csr_der(identity) {
        Ok(csr) => csr,
        Err(error) => {
            return Answer {
                signed: Err(error.to_string()),
                gone,
            };
        }
    };
    let mut last = String::from("no pod to ask about");
    for pod in pods {
        match client.sign(roots.clone(), pod, identity, &csr).await {
            Ok(certificate) => {
                return Answer {
                    signed: Ok((certificate, key)),
                    gone,
                };
            }
            Err(error) => {
                if error.pod_is_gone() {
                    gone.push(pod.clone());
                }
                let next = error.is_about_the_pod();
                last = error.to_string();
                if !next {
                    break;
                }
            }
        }
    }
    Answer {
        signed: Err(last),
        gone,
    }
}
