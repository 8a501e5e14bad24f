use std::{net::TcpListener, os::fd::OwnedFd, thread};

use tokio::sync::mpsc;

use super::*;

/// A stand-in for the reconciler: answers with one pod whose inbound
/// listener is `listener`, and reports the release.
fn fake_reconciler(
    listener: &TcpListener,
    mut requests: mpsc::Receiver<Request>,
) -> thread::JoinHandle<bool> {
    let fd = OwnedFd::from(listener.try_clone().expect("dup"));
    thread::spawn(move || {
        let mut fd = Some(fd);
        while let Some(request) = requests.blocking_recv() {
            match request {
                Request::Listeners(reply) => {
                    let pod = PodListeners {
                        netns_cookie: 7,
                        inbound: fd.iter().map(|f| f.try_clone().expect("dup")).collect(),
                        ..PodListeners::default()
                    };
                    let _ = reply.send(vec![pod]);
                }
                Request::Release(reply) => {
                    fd.take();
                    let _ = reply.send(());
                    return true;
                }
            }
        }
        false
    })
}

/// An active agent (layout 2) in a temporary directory serving one pod,
/// whose inbound listener is the returned `app`, through a fake reconciler.
fn serving_agent() -> (tempfile::TempDir, TcpListener, thread::JoinHandle<bool>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Ok(Start::Active(active)) = Start::begin(&dir.path().join("handoff.sock"), 2) else {
        panic!("the first agent is active");
    };
    let app = TcpListener::bind("127.0.0.1:0").expect("listener");
    let (requests, received) = mpsc::channel(1);
    let reconciler = fake_reconciler(&app, received);
    active.serve(2, requests).expect("serve");
    (dir, app, reconciler)
}

#[test]
fn a_successor_receives_the_very_listeners_and_becomes_active() {
    let (dir, app, reconciler) = serving_agent();
    let path = dir.path().join("handoff.sock");

    let Ok(Start::Successor(mut successor)) = Start::begin(&path, 2) else {
        panic!("the second agent takes over");
    };
    let mut pods = successor.take_pods();
    let pod = pods.remove(&7).expect("the pod's listeners");
    assert_eq!(
        (pod.outbound.len(), pod.inbound.len(), pod.hbone.len()),
        (0, 1, 0)
    );
    let handed = TcpListener::from(pod.inbound.into_iter().next().expect("one"));
    assert_eq!(
        handed.local_addr().expect("addr"),
        app.local_addr().expect("addr"),
        "the same socket, not a new one"
    );
    // A connection made now is accepted through the handed descriptor.
    let _client = std::net::TcpStream::connect(app.local_addr().expect("addr")).expect("connect");
    handed.accept().expect("accepted through the handed socket");

    let now_active = successor.complete().expect("the handoff completes");
    assert!(
        reconciler.join().expect("reconciler"),
        "the old agent released its pods"
    );
    // The new agent now serves the socket: a third one finds it.
    let (requests, received) = mpsc::channel(1);
    let reconciler = fake_reconciler(&handed, received);
    now_active.serve(2, requests).expect("serve");
    let Ok(Start::Successor(third)) = Start::begin(&path, 2) else {
        panic!("a third agent finds the second");
    };
    drop(third);
    drop(reconciler);
}

#[test]
fn another_layout_is_refused_naming_both_versions_and_changes_nothing() {
    let (dir, _app, reconciler) = serving_agent();
    let path = dir.path().join("handoff.sock");

    let error = match Start::begin(&path, 3) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("a successor of another layout must be refused"),
    };
    assert!(
        error.contains("layout version 2") && error.contains("uses version 3"),
        "{error}"
    );
    // The running agent still serves, and a compatible successor works.
    let Ok(Start::Successor(successor)) = Start::begin(&path, 2) else {
        panic!("a compatible successor takes over");
    };
    successor.complete().expect("the handoff completes");
    assert!(reconciler.join().expect("reconciler"));
}

#[test]
fn a_stale_socket_of_a_dead_agent_is_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("handoff.sock");
    // An agent that died left its socket file behind and nothing listens.
    {
        let Ok(Start::Active(active)) = Start::begin(&path, 2) else {
            panic!("active");
        };
        drop(active);
    }
    assert!(path.exists(), "the dead agent left its socket file");
    let Ok(Start::Active(_active)) = Start::begin(&path, 2) else {
        panic!("a new agent becomes active over a dead one's socket");
    };
}

#[test]
fn a_second_agent_waits_while_another_holds_the_lock_without_answering() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("handoff.sock");
    // Another agent is starting: it holds the lock but does not listen yet.
    let lock = try_lock(&path).expect("lock file").expect("free");
    let waiter = {
        let path = path.clone();
        thread::spawn(move || Start::begin(&path, 2).map(|start| matches!(start, Start::Active(_))))
    };
    thread::sleep(Duration::from_millis(600));
    assert!(
        !waiter.is_finished(),
        "only one agent may be active: the second waits"
    );
    drop(lock);
    let became_active = waiter.join().expect("no panic").expect("starts");
    assert!(
        became_active,
        "once the lock is free, the waiting agent is the active one"
    );
}
