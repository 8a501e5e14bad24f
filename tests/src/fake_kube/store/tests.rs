use serde_json::json;

use super::{ObjectKey, SharedStore, StoreError};
use crate::fake_kube::resources::ResourceType;

fn pods() -> &'static ResourceType {
    ResourceType::by_plural("pods").expect("pods")
}

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        resource: "pods",
        namespace: "default".to_owned(),
        name: name.to_owned(),
    }
}

fn create(store: &SharedStore, name: &str) -> u64 {
    let pod = json!({ "metadata": { "name": name } });
    store
        .write(|store| store.create(pods(), Some("default"), pod))
        .expect("create");
    store.lock().resource_version()
}

#[test]
fn every_write_takes_the_next_resource_version() {
    let store = SharedStore::new(100);
    let first = create(&store, "a");
    let object = store.lock().get(&key("a")).expect("a");
    assert_eq!(object["metadata"]["resourceVersion"], first.to_string());
    assert_eq!(object["metadata"]["namespace"], "default");
    assert_eq!(
        (object["apiVersion"].as_str(), object["kind"].as_str()),
        (Some("v1"), Some("Pod"))
    );
    let updated = store
        .write(|store| {
            store.update(
                &key("a"),
                json!({ "metadata": { "name": "a" }, "spec": {} }),
            )
        })
        .expect("update");
    assert_eq!(
        updated["metadata"]["resourceVersion"],
        (first + 1).to_string()
    );
    assert_eq!(
        updated["metadata"]["uid"], object["metadata"]["uid"],
        "uid survives updates"
    );
    let stale = json!({ "metadata": { "name": "a", "resourceVersion": first.to_string() } });
    let conflict = store.write(|store| store.update(&key("a"), stale));
    assert!(
        matches!(conflict, Err(StoreError::Conflict { .. })),
        "{conflict:?}"
    );
    let deleted = store
        .write(|store| store.delete(&key("a")))
        .expect("delete");
    assert_eq!(
        deleted["metadata"]["resourceVersion"],
        (first + 2).to_string()
    );
}

#[test]
fn bounded_history_expires_old_versions() {
    let store = SharedStore::new(2);
    let start = store.lock().resource_version();
    let first = create(&store, "a");
    create(&store, "b");
    assert_eq!(
        store
            .lock()
            .changes_after(pods(), start)
            .expect("kept")
            .len(),
        2
    );
    create(&store, "c");
    let expired = store.lock().changes_after(pods(), start);
    assert!(
        matches!(expired, Err(StoreError::Expired { .. })),
        "{expired:?}"
    );
    let kept = store.lock().changes_after(pods(), first).expect("kept");
    let names: Vec<_> = kept.iter().map(|change| change.key.name.as_str()).collect();
    assert_eq!(names, ["b", "c"]);

    store.write(super::Store::compact);
    let now = store.lock().resource_version();
    assert!(
        store
            .lock()
            .changes_after(pods(), now)
            .expect("now")
            .is_empty()
    );
    assert!(matches!(
        store.lock().changes_after(pods(), now - 1),
        Err(StoreError::Expired { .. })
    ));
    let too_new = store.lock().changes_after(pods(), now + 1);
    assert!(
        matches!(too_new, Err(StoreError::TooLarge { .. })),
        "{too_new:?}"
    );
}

#[test]
fn exact_lists_undo_later_changes() {
    let store = SharedStore::new(100);
    let after_a = create(&store, "a");
    create(&store, "b");
    store
        .write(|store| store.delete(&key("a")))
        .expect("delete");
    let names = |version| -> Vec<String> {
        let listed = store
            .lock()
            .list_at(pods(), None, version)
            .expect("list_at");
        listed
            .iter()
            .map(|pod| {
                pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(names(after_a), ["a"]);
    assert_eq!(names(after_a + 1), ["a", "b"]);
    assert_eq!(names(after_a + 2), ["b"]);
}

/// Pages through `resource`'s pods `limit` at a time, each page resuming
/// after the previous one's last key at the first page's version, as a
/// client following `continue` tokens does.
fn page_names(store: &SharedStore, limit: usize, between_pages: impl Fn(usize)) -> Vec<String> {
    let mut names = Vec::new();
    let mut after = None;
    let mut version = None;
    for page_number in 0.. {
        let page = store
            .lock()
            .list_page(&super::PageRequest {
                resource: pods(),
                namespace: None,
                resource_version: version,
                after: after.as_ref(),
                limit,
                matches: &|pod| pod["metadata"]["name"] != "skip-me",
            })
            .expect("page");
        assert!(
            limit == 0 || page.items.len() <= limit,
            "a page holds at most `limit`"
        );
        version = Some(page.resource_version);
        names.extend(page.items.iter().map(|pod| {
            pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        between_pages(page_number);
    }
    names
}

#[test]
fn pages_of_a_list_show_the_first_pages_version_whatever_changes_between_them() {
    let store = SharedStore::new(100);
    for name in ["a", "b", "c", "d", "e", "skip-me", "f", "g"] {
        create(&store, name);
    }
    let all = ["a", "b", "c", "d", "e", "f", "g"];
    assert_eq!(page_names(&store, 0, |_| {}), all, "limit 0 is one page");
    assert_eq!(page_names(&store, 3, |_| {}), all);
    assert_eq!(page_names(&store, 7, |_| {}), all);
    // After the first page: "b" (listed) and "f" (not yet) deleted, "e"
    // changed, "h" and "aa" (before the cursor) created. The list still
    // shows the version of its first page.
    let changed = page_names(&store, 2, |page| {
        if page == 0 {
            store.write(|s| s.delete(&key("b"))).expect("delete b");
            store.write(|s| s.delete(&key("f"))).expect("delete f");
            store
                .write(|s| {
                    s.update(
                        &key("e"),
                        json!({ "metadata": { "name": "e" }, "spec": {} }),
                    )
                })
                .expect("update e");
            create(&store, "h");
            create(&store, "aa");
        }
    });
    assert_eq!(changed, all);
    assert_eq!(
        page_names(&store, 2, |_| {}),
        ["a", "aa", "c", "d", "e", "g", "h"],
        "a new list shows the changes"
    );
}

#[test]
fn a_page_at_a_version_no_longer_kept_is_expired() {
    let store = SharedStore::new(2);
    let first = create(&store, "a");
    for name in ["b", "c", "d"] {
        create(&store, name);
    }
    let expired = store.lock().list_page(&super::PageRequest {
        resource: pods(),
        namespace: None,
        resource_version: Some(first),
        after: Some(&key("a")),
        limit: 1,
        matches: &|_| true,
    });
    assert!(
        matches!(expired, Err(StoreError::Expired { .. })),
        "{expired:?}"
    );
}
