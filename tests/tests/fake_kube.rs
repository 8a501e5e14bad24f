//! The fake Kubernetes API server against the real `kube` client: the server
//! listens in node `cp`, the client runs in node `n1`'s network namespace and
//! reaches it over the test bed's fabric, as an agent would.

use std::fmt::Debug;
use std::pin::pin;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ambit_tests::fake_kube::{API_SERVER_AUDIENCE, FakeKube, NODE_NAME_EXTRA, NetnsRuntime};
use ambit_tests::netns::run_in_netns;
use ambit_tests::{Testbed, testbed_or_skip};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, VersionMatch, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The server in `cp`, a client runtime in `n1`. Fields drop in order: the
/// runtime and the server before the test bed removes their namespaces.
struct Cluster {
    runtime: NetnsRuntime,
    client: Client,
    kube: FakeKube,
    _tb: Testbed,
}

/// What a kube-runtime watcher reported.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String),
    Delete(String),
    Error(String),
}

impl Cluster {
    fn new(mut tb: Testbed) -> Self {
        let cp = tb.add_node("cp");
        let n1 = tb.add_node("n1");
        let kube = FakeKube::start(&cp).expect("fake API server in cp");
        assert_eq!(kube.url(), format!("http://{}:6443", cp.underlay_v4));
        let runtime = NetnsRuntime::new(&n1.netns_path).expect("client runtime in n1");
        let client = runtime
            .kube_client(kube.kube_config())
            .expect("kube client");
        Self {
            runtime,
            client,
            kube,
            _tb: tb,
        }
    }

    /// Runs client code in `n1`.
    fn run<T, F>(&self, work: impl FnOnce(Client) -> F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.runtime.block_on(work(self.client.clone()))
    }

    /// Runs a kube-runtime watcher (with kube's default backoff) in the
    /// background, reporting what it sees.
    fn watch<K>(&self, api: Api<K>, config: watcher::Config) -> mpsc::Receiver<Seen>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let (seen, receiver) = mpsc::channel();
        self.runtime.handle().spawn(async move {
            let mut events = pin!(watcher(api, config).default_backoff());
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(watcher::Event::Init) => Seen::Init,
                    Ok(watcher::Event::InitApply(object)) => Seen::InitApply(object.name_any()),
                    Ok(watcher::Event::InitDone) => Seen::InitDone,
                    Ok(watcher::Event::Apply(object)) => Seen::Apply(object.name_any()),
                    Ok(watcher::Event::Delete(object)) => Seen::Delete(object.name_any()),
                    Err(watcher::Error::WatchError(status)) => {
                        Seen::Error(format!("{} {}", status.code, status.reason))
                    }
                    Err(error) => Seen::Error(error.to_string()),
                };
                if seen.send(event).is_err() {
                    return;
                }
            }
        });
        receiver
    }
}

/// Waits for an event `wanted` accepts, returning it and everything before it.
fn wait_for(
    events: &mpsc::Receiver<Seen>,
    what: &str,
    wanted: impl Fn(&Seen) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => {
                let done = wanted(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            Err(error) => panic!("no {what} within {WAIT:?} ({error}); saw {seen:?}"),
        }
    }
}

fn pod(name: &str, namespace: &str, node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": { "app": app } },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "app" }] },
    })
}

fn api_error(error: kube::Error) -> (u16, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.reason),
        other => panic!("expected an API error, got {other}"),
    }
}

#[test]
fn lists_pods_by_node_and_labels() {
    let tb = testbed_or_skip!("kube_lists");
    let cluster = Cluster::new(tb);
    for object in [
        pod("a", "default", "n1", "web"),
        pod("b", "default", "n1", "db"),
        pod("c", "default", "n2", "web"),
        pod("d", "other", "n1", "web"),
    ] {
        cluster.kube.apply(object).expect("apply");
    }
    let stored = cluster
        .kube
        .get("pods", "default", "a")
        .expect("get")
        .expect("pod a exists");
    assert!(
        stored["metadata"]["uid"]
            .as_str()
            .is_some_and(|uid| uid.len() == 36),
        "{stored}"
    );
    assert!(
        stored["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z'))
    );
    let current = cluster.kube.resource_version().to_string();

    let (all_web_on_n1, default_web_on_n1, set_based, list_version, missing, bad_field) = cluster
        .run(|client| async move {
            let on_n1_web = ListParams::default()
                .fields("spec.nodeName=n1")
                .labels("app=web");
            let all = Api::<Pod>::all(client.clone())
                .list(&on_n1_web)
                .await
                .expect("list all");
            let names = |list: &kube::api::ObjectList<Pod>| {
                let mut names: Vec<String> = list
                    .iter()
                    .map(|pod| {
                        format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
                    })
                    .collect();
                names.sort();
                names
            };
            let default = Api::<Pod>::namespaced(client.clone(), "default");
            let in_default = default.list(&on_n1_web).await.expect("list default");
            // Metadata-only answers (`PartialObjectMetadata`), as metadata_watcher uses.
            let metadata = default
                .list_metadata(&on_n1_web)
                .await
                .expect("metadata list");
            let metadata_names: Vec<_> = metadata.iter().map(ResourceExt::name_any).collect();
            assert_eq!(metadata_names, ["a"]);
            let set = ListParams::default().labels("app in (web,db),app notin (db),!canary");
            let set_based = default.list(&set).await.expect("list by set");
            let missing = default.get("nope").await.expect_err("no such pod");
            let bad = default
                .list(&ListParams::default().fields("spec.nope=x"))
                .await
                .expect_err("bad field");
            (
                names(&all),
                names(&in_default),
                names(&set_based),
                all.metadata.resource_version,
                api_error(missing),
                api_error(bad),
            )
        });
    assert_eq!(all_web_on_n1, ["default/a", "other/d"]);
    assert_eq!(default_web_on_n1, ["default/a"]);
    assert_eq!(set_based, ["default/a", "default/c"]);
    assert_eq!(list_version, Some(current));
    assert_eq!(missing, (404, "NotFound".to_owned()));
    assert_eq!(bad_field, (400, "BadRequest".to_owned()));
}

/// `limit` and `continue`, as kube-runtime's watcher lists (500 a page):
/// pages that together hold the list at its first page's version, and a
/// damaged token refused.
#[test]
fn lists_in_pages_that_continue_at_one_version() {
    let tb = testbed_or_skip!("kube_pages");
    let cluster = Cluster::new(tb);
    for n in 0..25 {
        let node = if n % 5 == 0 { "n2" } else { "n1" };
        cluster
            .kube
            .apply(pod(&format!("p{n:02}"), "default", node, "web"))
            .expect("apply");
    }
    let (pages, names, versions, damaged) = cluster.run(|client| async move {
        let pods = Api::<Pod>::all(client.clone());
        let on_n1 = ListParams::default().fields("spec.nodeName=n1").limit(6);
        let mut pages = Vec::new();
        let mut names = Vec::new();
        let mut versions = Vec::new();
        let mut params = on_n1.clone();
        loop {
            let page = pods.list(&params).await.expect("list a page");
            pages.push(page.items.len());
            names.extend(page.iter().map(ResourceExt::name_any));
            versions.push(page.metadata.resource_version.clone());
            if pages.len() == 1 {
                // Written between pages: the list must not show it.
                let late: Pod =
                    serde_json::from_value(pod("p99", "default", "n1", "web")).expect("a pod");
                Api::<Pod>::namespaced(client.clone(), "default")
                    .create(&PostParams::default(), &late)
                    .await
                    .expect("create between pages");
            }
            match page.metadata.continue_ {
                Some(token) => params = on_n1.clone().continue_token(&token),
                None => break,
            }
        }
        let damaged = pods
            .list(&ListParams::default().limit(6).continue_token("not-a-token"))
            .await
            .expect_err("a damaged token");
        (pages, names, versions, api_error(damaged))
    });
    assert_eq!(pages, [6, 6, 6, 2], "20 pods of n1, 6 a page");
    let expected: Vec<String> = (0..25)
        .filter(|n| n % 5 != 0)
        .map(|n| format!("p{n:02}"))
        .collect();
    assert_eq!(names, expected);
    assert!(
        versions.windows(2).all(|pair| pair[0] == pair[1]),
        "every page shows the first page's version: {versions:?}"
    );
    assert_eq!(damaged, (400, "BadRequest".to_owned()));

    // kube-runtime's watcher pages through the list and then watches.
    let events = cluster.watch(
        Api::<Pod>::all(cluster.client.clone()),
        watcher::Config::default().page_size(4),
    );
    let listed = wait_for(&events, "InitDone", |e| *e == Seen::InitDone);
    let applied = listed
        .iter()
        .filter(|e| matches!(e, Seen::InitApply(_)))
        .count();
    assert_eq!(applied, 26, "every pod once: {listed:?}");
    cluster
        .kube
        .apply(pod("p98", "default", "n1", "web"))
        .expect("apply");
    wait_for(&events, "the watch after the pages", |e| {
        *e == Seen::Apply("p98".to_owned())
    });
}

#[test]
fn watcher_sees_pod_and_namespace_changes() {
    let tb = testbed_or_skip!("kube_watch");
    let cluster = Cluster::new(tb);
    let kube = &cluster.kube;
    kube.apply(pod("early", "default", "n1", "web"))
        .expect("apply");
    let pods = cluster.watch(
        Api::<Pod>::all(cluster.client.clone()),
        watcher::Config::default().fields("spec.nodeName=n1"),
    );
    let namespaces = cluster.watch(
        Api::<Namespace>::all(cluster.client.clone()),
        watcher::Config::default(),
    );
    let initial = wait_for(&pods, "initial list", |seen| *seen == Seen::InitDone);
    assert_eq!(
        initial,
        [Seen::Init, Seen::InitApply("early".into()), Seen::InitDone]
    );
    wait_for(&namespaces, "initial list", |seen| *seen == Seen::InitDone);

    // Raw watch events too, to see ADDED and MODIFIED apart.
    let since = kube.resource_version().to_string();
    let raw = cluster.runtime.handle().spawn({
        let api = Api::<Pod>::namespaced(cluster.client.clone(), "default");
        async move {
            let params = WatchParams::default()
                .fields("spec.nodeName=n1")
                .disable_bookmarks()
                .timeout(20);
            let stream = api.watch(&params, &since).await.expect("watch");
            let mut stream = pin!(stream);
            let mut kinds = Vec::new();
            while let Some(event) = stream.try_next().await.expect("watch event") {
                let (kind, name) = match event {
                    WatchEvent::Added(pod) => ("ADDED", pod.name_any()),
                    WatchEvent::Modified(pod) => ("MODIFIED", pod.name_any()),
                    WatchEvent::Deleted(pod) => ("DELETED", pod.name_any()),
                    other => ("OTHER", format!("{other:?}")),
                };
                kinds.push(format!("{kind} {name}"));
                if kinds.len() == 4 {
                    break;
                }
            }
            kinds
        }
    });

    kube.apply(pod("a", "default", "n1", "web")).expect("apply");
    wait_for(&pods, "a added", |seen| *seen == Seen::Apply("a".into()));
    kube.apply(pod("elsewhere", "default", "n2", "web"))
        .expect("apply");
    kube.merge_patch(
        "pods",
        "default",
        "a",
        &json!({ "metadata": { "labels": { "v": "2" } } }),
    )
    .expect("patch");
    let after_patch = wait_for(&pods, "a modified", |seen| *seen == Seen::Apply("a".into()));
    assert_eq!(
        after_patch,
        [Seen::Apply("a".into())],
        "the pod on n2 is not selected"
    );
    // Leaving the selection reads as a deletion.
    kube.merge_patch(
        "pods",
        "default",
        "early",
        &json!({ "spec": { "nodeName": "n2" } }),
    )
    .expect("move");
    wait_for(&pods, "early leaving", |seen| {
        *seen == Seen::Delete("early".into())
    });
    kube.delete("pods", "default", "a").expect("delete");
    wait_for(&pods, "a deleted", |seen| *seen == Seen::Delete("a".into()));
    let kinds = cluster.runtime.block_on(raw).expect("raw watch task");
    assert_eq!(
        kinds,
        ["ADDED a", "MODIFIED a", "DELETED early", "DELETED a"]
    );

    kube.apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "team" } }))
        .expect("namespace");
    wait_for(&namespaces, "team added", |seen| {
        *seen == Seen::Apply("team".into())
    });
    kube.delete("namespaces", "", "team")
        .expect("delete namespace");
    wait_for(&namespaces, "team deleted", |seen| {
        *seen == Seen::Delete("team".into())
    });
}

#[test]
fn watch_from_compacted_version_gets_410_and_watcher_relists() {
    let tb = testbed_or_skip!("kube_compact");
    let mut cluster = Cluster::new(tb);
    cluster
        .kube
        .apply(pod("a", "default", "n1", "web"))
        .expect("apply");
    let pods = cluster.watch(
        Api::<Pod>::all(cluster.client.clone()),
        watcher::Config::default(),
    );
    wait_for(&pods, "initial list", |seen| *seen == Seen::InitDone);
    let old = cluster.kube.resource_version();

    // The API server goes away; meanwhile a change, then etcd compacts.
    cluster.kube.stop();
    cluster
        .kube
        .apply(pod("b", "default", "n1", "web"))
        .expect("apply");
    cluster.kube.compact();
    cluster.kube.restart().expect("restart");
    let recovery = wait_for(&pods, "relist", |seen| *seen == Seen::InitDone);
    let expired = recovery
        .iter()
        .position(|seen| *seen == Seen::Error("410 Expired".into()));
    let relist = recovery.iter().position(|seen| *seen == Seen::Init);
    assert!(
        matches!((expired, relist), (Some(e), Some(r)) if e < r),
        "{recovery:?}"
    );
    assert!(
        recovery.ends_with(&[
            Seen::InitApply("a".into()),
            Seen::InitApply("b".into()),
            Seen::InitDone
        ]),
        "{recovery:?}"
    );

    // Raw: a watch from before the compaction gets an ERROR event with 410, an
    // exact list there gets HTTP 410; an exact list now works.
    let now = cluster.kube.resource_version();
    let (watch_error, list_error, exact_now) = cluster.run(|client| async move {
        let api = Api::<Pod>::all(client);
        let stream = api
            .watch(&WatchParams::default(), &old.to_string())
            .await
            .expect("watch");
        let first = pin!(stream)
            .try_next()
            .await
            .expect("event")
            .expect("one event");
        let WatchEvent::Error(status) = first else {
            panic!("expected an ERROR event, got {first:?}")
        };
        let exact = |version: u64| {
            ListParams::default()
                .at(&version.to_string())
                .matching(VersionMatch::Exact)
        };
        let list_error = api.list(&exact(old)).await.expect_err("too old");
        let exact_now = api.list(&exact(now)).await.expect("exact list now");
        (
            (status.code, status.reason),
            api_error(list_error),
            exact_now.items.len(),
        )
    });
    assert_eq!(watch_error, (410, "Expired".to_owned()));
    assert_eq!(list_error, (410, "Expired".to_owned()));
    assert_eq!(exact_now, 2);
}

#[test]
fn watcher_retries_while_down_and_resumes_after_restart() {
    let tb = testbed_or_skip!("kube_restart");
    let mut cluster = Cluster::new(tb);
    let pods = cluster.watch(
        Api::<Pod>::all(cluster.client.clone()),
        watcher::Config::default(),
    );
    wait_for(&pods, "initial list", |seen| *seen == Seen::InitDone);
    cluster
        .kube
        .apply(pod("before", "default", "n1", "web"))
        .expect("apply");
    wait_for(&pods, "before", |seen| {
        *seen == Seen::Apply("before".into())
    });

    cluster.kube.stop();
    assert!(!cluster.kube.is_running());
    let address = cluster.kube.addr();
    let refused = run_in_netns(cluster.kube.netns_path(), || {
        std::net::TcpStream::connect(address)
    })
    .expect("enter cp");
    assert_eq!(
        refused.expect_err("stopped server").kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    cluster
        .kube
        .apply(pod("while-down", "default", "n1", "web"))
        .expect("apply");
    cluster
        .kube
        .delete("pods", "default", "before")
        .expect("delete");
    // kube's backoff keeps the watcher trying.
    wait_for(&pods, "a failed retry", |seen| {
        matches!(seen, Seen::Error(_))
    });

    cluster.kube.restart().expect("restart");
    let resumed = wait_for(&pods, "before deleted", |seen| {
        *seen == Seen::Delete("before".into())
    });
    assert!(
        resumed.contains(&Seen::Apply("while-down".into())),
        "{resumed:?}"
    );
    assert!(
        !resumed.contains(&Seen::Init),
        "resumed from history, no relist: {resumed:?}"
    );
}

#[test]
fn bookmarks_timeouts_and_streaming_lists() {
    let tb = testbed_or_skip!("kube_bookmarks");
    let cluster = Cluster::new(tb);
    cluster
        .kube
        .apply(pod("a", "default", "n1", "web"))
        .expect("apply");
    let since = cluster.kube.resource_version();
    let (with, without, elapsed) = cluster.run(|client| async move {
        let api = Api::<Pod>::all(client);
        let bookmarks = |params: WatchParams| {
            let api = api.clone();
            async move {
                let stream = api.watch(&params, &since.to_string()).await.expect("watch");
                let events: Vec<_> = stream.try_collect().await.expect("events");
                events
                    .into_iter()
                    .map(|event| match event {
                        WatchEvent::Bookmark(bookmark) => bookmark.metadata.resource_version,
                        other => panic!("only bookmarks expected, got {other:?}"),
                    })
                    .collect::<Vec<_>>()
            }
        };
        let start = Instant::now();
        let with = bookmarks(WatchParams::default().timeout(3)).await;
        let elapsed = start.elapsed();
        let without = bookmarks(WatchParams::default().disable_bookmarks().timeout(2)).await;
        (with, without, elapsed)
    });
    assert!(with.len() >= 2, "a bookmark a second: {with:?}");
    assert!(
        with.iter().all(|version| *version == since.to_string()),
        "{with:?}"
    );
    assert!(without.is_empty(), "{without:?}");
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(6),
        "timeoutSeconds=3 took {elapsed:?}"
    );

    let streamed = cluster.watch(
        Api::<Pod>::all(cluster.client.clone()),
        watcher::Config::default().streaming_lists(),
    );
    let initial = wait_for(&streamed, "initial events", |seen| *seen == Seen::InitDone);
    assert_eq!(
        initial,
        [Seen::Init, Seen::InitApply("a".into()), Seen::InitDone]
    );
}

#[test]
fn dynamic_authorization_policies() {
    let tb = testbed_or_skip!("kube_dynamic");
    let cluster = Cluster::new(tb);
    cluster
        .kube
        .apply(json!({
            "apiVersion": "security.ambit.dev/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": { "name": "from-test", "namespace": "default", "labels": { "team": "a" } },
            "spec": { "action": "ALLOW" },
        }))
        .expect("apply policy");
    let (names, patched_action, version) = cluster.run(|client| async move {
        let gvk = GroupVersionKind::gvk("security.ambit.dev", "v1alpha1", "AuthorizationPolicy");
        let (resource, _) = kube::discovery::pinned_kind(&client, &gvk)
            .await
            .expect("discovery");
        assert_eq!(
            resource,
            ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies")
        );
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), "default", &resource);
        let mut policy = DynamicObject::new("from-client", &resource);
        policy.data = json!({ "spec": { "action": "DENY" } });
        policy.metadata.labels = Some([("team".to_owned(), "a".to_owned())].into());
        api.create(&PostParams::default(), &policy)
            .await
            .expect("create");
        let again = api
            .create(&PostParams::default(), &policy)
            .await
            .expect_err("exists");
        assert_eq!(api_error(again), (409, "AlreadyExists".to_owned()));
        let patch = json!({ "spec": { "action": "AUDIT" } });
        api.patch(
            "from-client",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("patch");
        let listed = api
            .list(&ListParams::default().labels("team=a"))
            .await
            .expect("list");
        let mut names: Vec<String> = listed.iter().map(ResourceExt::name_any).collect();
        names.sort();
        api.delete("from-test", &DeleteParams::default())
            .await
            .expect("delete");
        let version = client
            .apiserver_version()
            .await
            .expect("version")
            .git_version;
        (
            names,
            listed
                .items
                .iter()
                .find(|p| p.name_any() == "from-client")
                .map(|p| p.data["spec"]["action"].clone()),
            version,
        )
    });
    assert_eq!(names, ["from-client", "from-test"]);
    assert_eq!(patched_action, Some(json!("AUDIT")));
    assert_eq!(version, "v1.33.0");
    assert!(
        cluster
            .kube
            .get("authorizationpolicies", "default", "from-test")
            .expect("get")
            .is_none()
    );
    let stored = cluster
        .kube
        .get("authorizationpolicies", "default", "from-client")
        .expect("get")
        .expect("exists");
    assert_eq!(stored["spec"]["action"], "AUDIT");
    assert_eq!(stored["metadata"]["generation"], 2, "the spec changed once");
}

/// Typed writes: a stale resourceVersion conflicts, `status` is its own
/// subresource, discovery.k8s.io objects work like core ones.
#[test]
fn typed_writes_conflicts_and_status() {
    let tb = testbed_or_skip!("kube_typed");
    let cluster = Cluster::new(tb);
    let (conflict, slices) = cluster.run(|client| async move {
        let pods = Api::<Pod>::namespaced(client.clone(), "default");
        let created = pods
            .create(
                &PostParams::default(),
                &serde_json::from_value(pod("p", "default", "n1", "web")).expect("pod"),
            )
            .await
            .expect("create pod");
        pods.patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "podIP": "10.10.1.11" } })),
        )
        .await
        .expect("status");
        let conflict = pods
            .replace("p", &PostParams::default(), &created)
            .await
            .expect_err("stale");
        let slices = Api::<EndpointSlice>::namespaced(client, "default");
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "web-1", "labels": { "kubernetes.io/service-name": "web" } },
            "addressType": "IPv4", "endpoints": [{ "addresses": ["10.10.1.11"] }],
        });
        slices
            .create(
                &PostParams::default(),
                &serde_json::from_value(slice).expect("slice"),
            )
            .await
            .expect("slice");
        let listed = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .expect("list");
        (api_error(conflict), listed.items.len())
    });
    assert_eq!(conflict, (409, "Conflict".to_owned()));
    assert_eq!(slices, 1);
    let stored = cluster
        .kube
        .get("pods", "default", "p")
        .expect("get")
        .expect("pod p");
    assert_eq!(stored["status"]["podIP"], "10.10.1.11");
}

#[test]
fn token_reviews_check_token_and_audience() {
    let tb = testbed_or_skip!("kube_tokens");
    let cluster = Cluster::new(tb);
    cluster.kube.register_token(
        "node-token",
        "system:serviceaccount:ambit-system:ambit-node",
        &["ambit-ca"],
        Some("n1"),
    );
    cluster
        .kube
        .register_token("api-token", "alice", &[API_SERVER_AUDIENCE], None);
    let reviews = cluster.run(|client| async move {
        let api = Api::<TokenReview>::all(client);
        let mut answers = Vec::new();
        for (token, audiences) in [
            ("node-token", vec!["ambit-ca"]),
            ("node-token", vec!["other", "ambit-ca"]),
            ("node-token", vec!["other"]),
            ("node-token", vec![]),
            ("forged", vec!["ambit-ca"]),
            ("api-token", vec![]),
        ] {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: Some(audiences.into_iter().map(str::to_owned).collect()),
                },
                ..TokenReview::default()
            };
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .expect("token review");
            answers.push(answer.status.expect("a status"));
        }
        answers
    });
    let authenticated: Vec<bool> = reviews
        .iter()
        .map(|status| status.authenticated == Some(true))
        .collect();
    assert_eq!(authenticated, [true, true, false, false, false, true]);
    let user = reviews[0].user.clone().expect("user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:ambit-system:ambit-node")
    );
    let groups = user.groups.expect("groups");
    assert!(
        groups.contains(&"system:serviceaccounts:ambit-system".to_owned()),
        "{groups:?}"
    );
    let extra = user.extra.expect("extra");
    assert_eq!(extra.get(NODE_NAME_EXTRA), Some(&vec!["n1".to_owned()]));
    assert_eq!(reviews[1].audiences, Some(vec!["ambit-ca".to_owned()]));
    for refused in &reviews[2..5] {
        assert!(
            refused
                .error
                .as_deref()
                .is_some_and(|error| error.contains("invalid bearer token")),
            "{refused:?}"
        );
    }
    assert_eq!(
        reviews[5]
            .user
            .as_ref()
            .and_then(|user| user.username.as_deref()),
        Some("alice")
    );
}
