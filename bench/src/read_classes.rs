//! Fan-out with read classes (issue 19): the hot-context fan-out of
//! [`crate::fanout`] with the subscribers of `job/1` split over C read
//! classes, against the same load read without rules.
//!
//! The demo's `job` channel gives a non-admin a Task rule that names their id
//! (`private = false OR assignee = me OR created_by = me`), so every non-admin
//! user is a class of their own, while an admin (carol) reads without a rule.
//! Only project members may subscribe and the demo has two (alice and bob), so
//! each server's fjall store is filled first by `statecast-bench
//! seed-read-classes` (the demo rows, then users 11, 12, … as members of
//! project 1, written through the demo's engine as a system write) and the
//! real binary serves it in demo mode, accepting JWTs for those users. Every
//! point runs on such a fresh server with the same users; only who subscribes
//! differs: C = 0 is 1,000 × carol (no read rules), C ≥ 1 is users 11 … 10 + C
//! in turn. The writer is carol saving task 2 (public, so every class reads
//! every write), so the writer adds no class of its own.

use crate::client::BoxError;
use crate::client::Kind;
use crate::fanout::{self, FanoutResult};
use crate::server::Server;
use statecast_core::protocol::v1::Write;
use statecast_core::{Id, JwtHs256, Store};
use statecast_server::{ServerAuth, ServerBuilder, demo};
use statecast_store_fjall::FjallStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The HS256 secret the bench's servers accept JWTs with (loopback only).
pub const JWT_SECRET: &str = "statecast-bench-read-classes-not-a-real-secret";

/// The first extra member's user id (11, 12, …).
pub const FIRST_MEMBER: Id = 11;

/// The id of carol, the demo's admin.
const CAROL: Id = 3;

/// The task the writer saves (public: every class reads it; carol, an admin, may save it).
const TASK: i64 = 2;

/// `statecast-bench seed-read-classes`: fills the empty fjall store in
/// `dir` with the demo rows and `users` more non-admin users (ids 11, 12, …),
/// each a member of project 1, through the demo app's engine.
pub async fn seed(dir: &Path, users: usize) -> Result<(), BoxError> {
    let schema = demo::schema();
    let store: Arc<dyn Store> = Arc::new(FjallStore::open(dir, schema.clone())?);
    let mut builder = ServerBuilder::new(schema.clone())
        .channels(demo::channels(&schema))
        .streams(demo::streams(&schema))
        .store(store)
        .authenticator(ServerAuth::new(Some(demo::dev_tokens()), None));
    let engine = builder.build_engine()?;
    if !demo::seed_if_empty(&engine, 2).await? {
        return Err(format!("{} is not empty", dir.display()).into());
    }
    let mut ops = Vec::with_capacity(users * 2);
    for k in 0..users as Id {
        let id = FIRST_MEMBER + k;
        ops.push(Write::create("User").id(id).set("name", format!("u{id}")).set("is_admin", false));
        ops.push(Write::create("ProjectMember").id(1000 + id).set("project", 1).set("user", id));
    }
    if !ops.is_empty() {
        let response = engine.write(statecast_core::engine::Actor::System, Write::batch(ops).write_id(2)).await?;
        if !response.success {
            return Err(format!("the members' write was refused: {:?}", response.error).into());
        }
    }
    Ok(())
}

/// The tokens of `n` subscribers in `classes` read classes (0: all carol, no rules).
fn tokens(n: usize, classes: usize) -> Result<Vec<String>, BoxError> {
    let jwt = JwtHs256::new(JWT_SECRET.as_bytes())?;
    let ttl = Duration::from_secs(3600);
    if classes == 0 {
        let carol = jwt.issue(CAROL, "carol", ttl)?;
        return Ok(vec![carol; n]);
    }
    let per_user: Vec<String> = (0..classes as Id)
        .map(|k| jwt.issue(FIRST_MEMBER + k, &format!("u{}", FIRST_MEMBER + k), ttl))
        .collect::<Result<_, _>>()?;
    Ok((0..n).map(|i| per_user[i % classes].clone()).collect())
}

/// One point: a fresh server whose store holds `members` extra members; `n`
/// subscribers of `job/1` in `classes` classes; carol saves task 2 at `rate`/s for `length`.
pub async fn run(
    bin: &Path,
    members: usize,
    n: usize,
    classes: usize,
    rate: u64,
    length: Duration,
) -> Result<FanoutResult, BoxError> {
    if classes > members {
        return Err(format!("{classes} classes need {classes} members, the store has {members}").into());
    }
    let srv = Server::start_fjall_with_members(bin, members, JWT_SECRET)?;
    let subs = fanout::subscribers_as(Kind::Ws, &srv.target, &tokens(n, classes)?).await;
    if let Some(Err(e)) = subs.iter().find(|s| s.is_err()) {
        let failed = subs.iter().filter(|s| s.is_err()).count();
        return Err(format!("{failed} of {n} subscribers could not subscribe, e.g.: {e}").into());
    }
    let carol = JwtHs256::new(JWT_SECRET.as_bytes())?.issue(CAROL, "carol", Duration::from_secs(3600))?;
    fanout::run_with(&srv, Kind::Ws, subs, (&carol, TASK), rate, length, true, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_evenly_over_the_classes() {
        let t = tokens(1000, 10).expect("tokens");
        let mut distinct = t.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 10);
        assert!(distinct.iter().all(|d| t.iter().filter(|x| *x == d).count() == 100));
        let none = tokens(5, 0).expect("tokens");
        assert!(none.iter().all(|x| *x == none[0]));
    }
}
