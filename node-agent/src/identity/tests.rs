use std::time::Instant;

use super::*;

fn id(account: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", account).unwrap()
}

fn pod(name: &str) -> PodKey {
    PodKey {
        namespace: "shop".into(),
        name: name.into(),
    }
}

fn local(lifetime: Duration) -> Arc<CertManager> {
    let ca = CertificateAuthority::generate("cluster.local", Duration::from_hours(24)).unwrap();
    let bundle = ca.trust_bundle();
    CertManager::new(ca, &bundle, lifetime).unwrap()
}

fn identities(manager: &CertManager) -> Vec<String> {
    manager
        .certificates()
        .into_iter()
        .map(|c| c.identity)
        .collect()
}

#[test]
fn a_used_certificate_is_renewed_and_a_released_one_dropped_at_half_life() {
    let manager = local(Duration::from_secs(100));
    manager.ensure(&id("web"), &pod("web-1")).unwrap();
    manager.ensure(&id("db"), &pod("db-1")).unwrap();
    manager.release(&id("db"), &pod("db-1"));
    // Released, but kept until its half-life: a pod back now has it at once.
    let now = SystemTime::now();
    assert!(manager.rotate_due(now).is_empty());
    assert_eq!(identities(&manager).len(), 2);
    let later = now + Duration::from_mins(1);
    assert_eq!(manager.rotate_due(later), vec![id("web")]);
    assert_eq!(identities(&manager), vec![id("web").to_string()]);
    assert_eq!(manager.certificates()[0].rotations, 1);
}

#[test]
fn a_certificate_shorter_lived_than_its_backdating_is_rotated_at_half_its_life_not_at_once() {
    // Issued valid from a minute ago: measured from there, a minute's
    // certificate was past half its life from the start, and rotated on
    // every check.
    let manager = local(Duration::from_mins(1));
    manager.ensure(&id("web"), &pod("web-1")).unwrap();
    let now = SystemTime::now();
    assert!(manager.rotate_due(now + Duration::from_secs(10)).is_empty());
    assert!(manager.rotate_due(now + Duration::from_secs(25)).is_empty());
    assert_eq!(
        manager.rotate_due(now + Duration::from_secs(31)),
        vec![id("web")]
    );
    assert_eq!(manager.certificates()[0].rotations, 1);
}

#[test]
fn an_identity_stays_while_any_of_its_pods_does() {
    let manager = local(Duration::from_secs(100));
    manager.ensure(&id("web"), &pod("web-1")).unwrap();
    manager.ensure(&id("web"), &pod("web-2")).unwrap();
    manager.release(&id("web"), &pod("web-1"));
    let later = SystemTime::now() + Duration::from_mins(1);
    assert_eq!(manager.rotate_due(later), vec![id("web")]);
}

#[test]
fn the_trust_bundle_file_is_followed_and_a_broken_one_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("cluster.local", Duration::from_hours(24)).unwrap();
    let (cert, key) = ca.write(&dir.path().join("ca")).unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, "").unwrap();
    let files = CaFiles {
        cert,
        key,
        trust_bundle: Some(bundle.clone()),
    };
    // An empty file is no bundle.
    assert!(CertManager::load(&files, Duration::from_secs(100)).is_err());
    let other = CertificateAuthority::generate("other.example", Duration::from_hours(24)).unwrap();
    std::fs::write(&bundle, other.certificate_pem()).unwrap();
    let manager = CertManager::load(&files, Duration::from_secs(100)).unwrap();
    assert_eq!(manager.roots().len(), 2, "the file's root and the CA");
    let config = manager.server_config(&id("web")).unwrap();
    manager.follow_trust_bundle();
    assert!(
        Arc::ptr_eq(&config, &manager.server_config(&id("web")).unwrap()),
        "unchanged: the cached configuration stays"
    );
    let third = CertificateAuthority::generate("third.example", Duration::from_hours(24)).unwrap();
    std::fs::write(
        &bundle,
        [other.certificate_pem(), third.certificate_pem()].concat(),
    )
    .unwrap();
    manager.follow_trust_bundle();
    assert_eq!(manager.roots().len(), 3);
    assert!(
        !Arc::ptr_eq(&config, &manager.server_config(&id("web")).unwrap()),
        "new handshakes get the new roots"
    );
    for broken in ["not PEM", ""] {
        std::fs::write(&bundle, broken).unwrap();
        manager.follow_trust_bundle();
        assert_eq!(manager.roots().len(), 3, "{broken:?} keeps the roots");
    }
    std::fs::remove_file(&bundle).unwrap();
    manager.follow_trust_bundle();
    assert_eq!(manager.roots().len(), 3, "a missing file keeps the roots");
}

#[test]
fn ensure_never_waits_for_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("cluster.local", Duration::from_hours(24)).unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ca.certificate_pem()).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    // Accepts TCP connections (the backlog) but never answers TLS: a
    // request hangs until its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("https://{}", silent.local_addr().unwrap());
    let manager =
        CertManager::with_controller(&address, &bundle, token, Duration::from_secs(100)).unwrap();
    let started = Instant::now();
    let error = manager.ensure(&id("web"), &pod("web-1")).unwrap_err();
    assert!(matches!(error, IdentityError::Requested { .. }), "{error}");
    assert!(
        error.to_string().contains(&format!(
            "waiting for the controller at {address} to sign the certificate of {}",
            id("web")
        )),
        "{error}"
    );
    // Asked again while the request is under way: no second request, no wait.
    assert!(manager.ensure(&id("web"), &pod("web-2")).is_err());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(lock(&manager.requests).len(), 1);
    assert!(manager.certificates().is_empty());
}

#[tokio::test]
async fn a_failed_request_is_reported_with_its_reason_and_wakes_the_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("cluster.local", Duration::from_hours(24)).unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ca.certificate_pem()).unwrap();
    // Nothing listens on port 1: refused at once.
    let manager = CertManager::with_controller(
        "https://127.0.0.1:1",
        &bundle,
        dir.path().join("token"),
        Duration::from_secs(100),
    )
    .unwrap();
    assert!(manager.ensure(&id("web"), &pod("web-1")).is_err());
    tokio::time::timeout(Duration::from_secs(5), manager.changed())
        .await
        .expect("the request ends");
    let error = manager.ensure(&id("web"), &pod("web-1")).unwrap_err();
    assert!(matches!(error, IdentityError::NotSigned { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("cannot read the service-account token") && text.contains("backoff"),
        "{text}"
    );
}
