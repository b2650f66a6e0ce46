//! A directory holds one engine's files: opening it with the other engine is
//! refused with a reason, and touches nothing.

use statecast_core::store::{Store, StoreError};
use statecast_core::testkit::store_suite::test_schema;
use statecast_store_fjall::FjallStore;
use statecast_store_sled::SledStore;

fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_refused(r: Result<impl Sized, StoreError>, other: &str) {
    match r {
        Err(StoreError::Unavailable { message: msg, .. }) => {
            assert!(msg.contains(&format!("holds a {other} database")), "{msg}")
        }
        Err(e) => panic!("expected Unavailable naming {other}, got {e}"),
        Ok(_) => panic!("opened a {other} directory with the wrong engine"),
    }
}

#[tokio::test]
async fn each_engine_refuses_the_others_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (sled_dir, fjall_dir) = (dir.path().join("sled"), dir.path().join("fjall"));
    let sled = SledStore::open(&sled_dir, test_schema()).expect("open sled");
    sled.close().await.expect("close sled");
    drop(sled);
    let fjall = FjallStore::open(&fjall_dir, test_schema()).expect("open fjall");
    fjall.close().await.expect("close fjall");
    drop(fjall);
    let (sled_files, fjall_files) = (file_names(&sled_dir), file_names(&fjall_dir));

    assert_refused(FjallStore::open(&sled_dir, test_schema()), "sled");
    assert_refused(SledStore::open(&fjall_dir, test_schema()), "fjall");
    assert_eq!(file_names(&sled_dir), sled_files, "the sled directory is untouched");
    assert_eq!(file_names(&fjall_dir), fjall_files, "the fjall directory is untouched");

    // Each still opens with its own engine.
    SledStore::open(&sled_dir, test_schema()).expect("reopen sled").close().await.expect("close");
}
