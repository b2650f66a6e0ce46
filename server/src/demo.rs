//! The demo app that `statecast-server` runs by default: the seed's
//! "Complete Channel" example (jobs, tasks, project members) made concrete.

use async_trait::async_trait;
use serde_json::Value;
use statecast_core::channel::{Channel, Op};
use statecast_core::engine::{Actor, Engine};
use statecast_core::protocol::v1::Write;
use statecast_core::row::{Fields, Row};
use statecast_core::schema::{EntityType, OnDelete, Schema, SchemaError, ServerValue};
use statecast_core::store::StoreError;
use statecast_core::stream::{Filters, Lookup, Payload, Stream, StreamPolicy, StreamRequest};
use statecast_core::{DevTokens, Id, Policy, PolicyContext, PolicyError, ReadRule, User, WireError};
use std::sync::Arc;

/// The demo users: (id, dev token = name, is_admin).
pub const USERS: [(Id, &str, bool); 4] =
    [(1, "alice", false), (2, "bob", false), (3, "carol", true), (4, "dave", false)];

pub use crate::config::DEMO_JOBS_RANGE;

/// The fields of a task its assignee may change.
const ASSIGNEE_FIELDS: [&str; 3] = ["status", "notes", "private"];

/// The demo schema: User, Project, ProjectMember, Job and Task.
pub fn schema() -> Arc<Schema> {
    try_schema().unwrap_or_else(|e| unreachable!("the demo schema is valid: {e}"))
}

fn try_schema() -> Result<Arc<Schema>, SchemaError> {
    Schema::builder()
        .entity("User", |t| {
            t.string("name").len(1, 200);
            t.bool("is_admin").default(false);
            t.string("email").nullable();
        })
        .entity("Project", |t| {
            t.string("name").len(1, 200);
        })
        .entity("ProjectMember", |t| {
            t.reference("project", "Project").on_delete(OnDelete::Cascade);
            t.reference("user", "User").on_delete(OnDelete::Cascade);
        })
        .entity("Job", |t| {
            t.string("name").len(1, 200);
            t.reference("project", "Project").on_delete(OnDelete::Cascade);
            t.reference("owner", "User");
        })
        .entity("Task", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.string("name").len(1, 200);
            t.string("status").one_of(["todo", "doing", "done"]).default("todo");
            t.string("notes").default("");
            t.reference("developer", "User").nullable();
            t.reference("assignee", "User").nullable();
            t.reference("created_by", "User").nullable().server_value(ServerValue::UserId);
            t.bool("private").default(false);
        })
        .relation("Project", "members", "ProjectMember", "project")
        .relation("Project", "jobs", "Job", "project")
        .relation("Job", "tasks", "Task", "job")
        .build()
}

/// The demo channels: `job` (anchor Job, tree `tasks`, Task writable) and
/// `project` (anchor Project, trees `members` and `jobs`; admins add and
/// remove members).
pub fn channels(schema: &Schema) -> Vec<Channel> {
    let job = Channel::builder("job", "Job")
        .include("tasks")
        .writable("Task", [Op::Save, Op::Create, Op::Delete])
        .policy(DemoPolicy)
        .build(schema)
        .unwrap_or_else(|e| unreachable!("the demo channel is valid: {e}"));
    let project = Channel::builder("project", "Project")
        .include("members")
        .include("jobs")
        .writable("ProjectMember", [Op::Create, Op::Delete])
        .policy(ProjectPolicy)
        .build(schema)
        .unwrap_or_else(|e| unreachable!("the demo channel is valid: {e}"));
    vec![job, project]
}

/// What the demo's read rules read: memberships, and who is an admin. A
/// commit to either decides the subscriptions again (live revocation).
const READ_RULES_READ: &[&str] = &["ProjectMember", "User"];

/// The policy of the `project` channel: its members and admins read it;
/// admins add and remove members.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProjectPolicy;

#[async_trait]
impl Policy for ProjectPolicy {
    async fn has_permission(&self, cx: &PolicyContext<'_>, anchor: &Row) -> Result<bool, PolicyError> {
        Ok(DemoPolicy::is_admin(cx).await? || DemoPolicy::is_project_member(cx, anchor.id).await?)
    }

    fn depends_on(&self) -> &[&str] {
        READ_RULES_READ
    }

    async fn can_create(
        &self,
        cx: &PolicyContext<'_>,
        ty: &EntityType,
        _parent: &Row,
        _data: &Fields,
    ) -> Result<bool, PolicyError> {
        Ok(ty.name == "ProjectMember" && DemoPolicy::is_admin(cx).await?)
    }

    async fn can_delete(&self, cx: &PolicyContext<'_>, instance: &Row) -> Result<bool, PolicyError> {
        Ok(&*instance.ty == "ProjectMember" && DemoPolicy::is_admin(cx).await?)
    }
}

/// The demo streams: `tasks` (every task, full rows, routed by `job`; for
/// project members and admins) and `my-tasks` (ids of the tasks assigned to
/// the user, routed by `assignee`; anyone signed in).
pub fn streams(schema: &Schema) -> Vec<Stream> {
    let tasks = Stream::builder("tasks", "Task")
        .payload(Payload::Full)
        .policy(TeamTasks)
        .index_fields(["job"])
        .build(schema)
        .unwrap_or_else(|e| unreachable!("the demo stream `tasks` is valid: {e}"));
    let my_tasks = Stream::builder("my-tasks", "Task")
        .payload(Payload::Id)
        .policy(MyTasks)
        .index_fields(["assignee"])
        .build(schema)
        .unwrap_or_else(|e| unreachable!("the demo stream `my-tasks` is valid: {e}"));
    let users = Stream::builder("users", "User")
        .payload(Payload::Full)
        .policy(Users)
        .build(schema)
        .unwrap_or_else(|e| unreachable!("the demo stream `users` is valid: {e}"));
    vec![tasks, my_tasks, users]
}

/// Who may read a task: admins every one; others the public ones and the
/// private ones they are assigned to or created.
async fn task_rule(cx: &PolicyContext<'_>) -> Result<ReadRule, PolicyError> {
    if DemoPolicy::is_admin(cx).await? {
        return Ok(ReadRule::all());
    }
    let me = cx.user().id;
    Ok(ReadRule::rows_where(Filters::new().eq("private", false))
        .or_where(Filters::new().eq("assignee", me))
        .or_where(Filters::new().eq("created_by", me)))
}

/// The policy of `users`: everyone signed in reads the users, but an
/// e-mail address only its owner and admins.
#[derive(Debug, Default, Clone, Copy)]
pub struct Users;

#[async_trait]
impl StreamPolicy for Users {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &StreamRequest<'_>) -> Result<bool, PolicyError> {
        Ok(true)
    }
    async fn read_rule(&self, cx: &PolicyContext<'_>, _: &StreamRequest<'_>) -> Result<ReadRule, PolicyError> {
        if DemoPolicy::is_admin(cx).await? {
            return Ok(ReadRule::all());
        }
        Ok(ReadRule::all().hide_unless("email", Filters::new().eq("id", cx.user().id)))
    }
}

/// The policy of `tasks`: the whole team's feed, for members of a project
/// and admins; anyone else is refused (403 `DENIED`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TeamTasks;

#[async_trait]
impl StreamPolicy for TeamTasks {
    async fn has_permission(&self, cx: &PolicyContext<'_>, _: &StreamRequest<'_>) -> Result<bool, PolicyError> {
        let me = cx.user().id;
        if !cx.referencing("ProjectMember", "user", me).await?.is_empty() {
            return Ok(true);
        }
        DemoPolicy::is_admin(cx).await
    }
    fn depends_on(&self) -> &[&str] {
        &["ProjectMember", "User", "Job"]
    }

    /// The tasks of the user's projects' jobs (all of them for admins), and
    /// of those the ones `task_rule` lets them read.
    async fn read_rule(&self, cx: &PolicyContext<'_>, _: &StreamRequest<'_>) -> Result<ReadRule, PolicyError> {
        if DemoPolicy::is_admin(cx).await? {
            return Ok(ReadRule::all());
        }
        let me = cx.user().id;
        let mut jobs: Vec<Id> = Vec::new();
        for membership in cx.referencing("ProjectMember", "user", me).await? {
            let Some(project) = membership.get_i64("project") else { continue };
            jobs.extend(cx.referencing("Job", "project", project).await?.iter().map(|j| j.id));
        }
        if jobs.is_empty() {
            return Ok(ReadRule::nothing());
        }
        jobs.sort_unstable();
        jobs.dedup();
        let mine = |f: Filters| f.with("job", Lookup::In, jobs.clone());
        Ok(ReadRule::rows_where(mine(Filters::new().eq("private", false)))
            .or_where(mine(Filters::new().eq("assignee", me)))
            .or_where(mine(Filters::new().eq("created_by", me))))
    }
}

/// The policy of `my-tasks`: anyone signed in, scoped to `assignee = the user`.
#[derive(Debug, Default, Clone, Copy)]
pub struct MyTasks;

#[async_trait]
impl StreamPolicy for MyTasks {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &StreamRequest<'_>) -> Result<bool, PolicyError> {
        Ok(true)
    }
    async fn scope(&self, cx: &PolicyContext<'_>, _: &StreamRequest<'_>) -> Result<Filters, PolicyError> {
        Ok(Filters::new().eq("assignee", cx.user().id))
    }
}

/// The dev tokens of the demo users: the token is the user's name.
pub fn dev_tokens() -> DevTokens {
    USERS.iter().fold(DevTokens::new(), |tokens, (id, name, _)| tokens.with(name, User::new(*id, *name)))
}

/// The policy of the `job` channel (the seed's "Complete Channel"):
/// members of the job's project and admins read; the assignee moves status and notes; members of
/// the job's project create; the creator or an admin deletes; an admin
/// changes anything writable, the parent `job` included.
#[derive(Debug, Default, Clone, Copy)]
pub struct DemoPolicy;

impl DemoPolicy {
    async fn is_admin(cx: &PolicyContext<'_>) -> Result<bool, PolicyError> {
        let me = cx.user().id;
        Ok(cx.get("User", me).await?.is_some_and(|u| u.get("is_admin") == &Value::Bool(true)))
    }

    async fn is_project_member(cx: &PolicyContext<'_>, project: Id) -> Result<bool, PolicyError> {
        let me = cx.user().id;
        let members = cx.referencing("ProjectMember", "project", project).await?;
        Ok(members.iter().any(|m| m.get_i64("user") == Some(me)))
    }
}

#[async_trait]
impl Policy for DemoPolicy {
    async fn has_permission(&self, cx: &PolicyContext<'_>, anchor: &Row) -> Result<bool, PolicyError> {
        if Self::is_admin(cx).await? {
            return Ok(true);
        }
        match anchor.get_i64("project") {
            Some(project) => Self::is_project_member(cx, project).await,
            None => Ok(false),
        }
    }

    fn depends_on(&self) -> &[&str] {
        READ_RULES_READ
    }

    async fn read_rule(&self, cx: &PolicyContext<'_>, ty: &EntityType) -> Result<ReadRule, PolicyError> {
        match ty.name.as_str() {
            "Task" => task_rule(cx).await,
            _ => Ok(ReadRule::all()),
        }
    }

    async fn can_save(&self, cx: &PolicyContext<'_>, instance: &Row, data: &Fields) -> Result<bool, PolicyError> {
        if &*instance.ty != "Task" {
            return Ok(false);
        }
        let assignee_fields_only = data.keys().all(|k| ASSIGNEE_FIELDS.contains(&k.as_str()));
        if assignee_fields_only && instance.get_i64("assignee") == Some(cx.user().id) {
            return Ok(true);
        }
        Self::is_admin(cx).await
    }

    async fn can_create(
        &self,
        cx: &PolicyContext<'_>,
        ty: &EntityType,
        parent: &Row,
        _data: &Fields,
    ) -> Result<bool, PolicyError> {
        if ty.name != "Task" || &*parent.ty != "Job" {
            return Ok(false);
        }
        match parent.get_i64("project") {
            Some(project) => Self::is_project_member(cx, project).await,
            None => Ok(false),
        }
    }

    async fn can_delete(&self, cx: &PolicyContext<'_>, instance: &Row) -> Result<bool, PolicyError> {
        if &*instance.ty != "Task" {
            return Ok(false);
        }
        if instance.get_i64("created_by") == Some(cx.user().id) {
            return Ok(true);
        }
        Self::is_admin(cx).await
    }
}

/// Why the demo rows could not be inserted.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("could not check whether the store is empty: {0}")]
    Store(#[from] StoreError),
    #[error("the demo seed write was refused: {0}")]
    Refused(#[from] WireError),
}

/// Inserts the demo rows (with `jobs` jobs, see [`seed_write`]) in one
/// system write, only into an empty store. Returns whether it did.
pub async fn seed_if_empty(engine: &Engine, jobs: u32) -> Result<bool, SeedError> {
    if !engine.store().is_empty().await? {
        return Ok(false);
    }
    let response = engine.write(Actor::System, seed_write(jobs)).await?;
    if response.success {
        return Ok(true);
    }
    let error = response.error.unwrap_or_else(|| WireError::internal("the seed write failed without an error"));
    Err(SeedError::Refused(error))
}

/// The one batch write of the demo rows (system writes may give positive ids
/// and set read-only fields). Jobs 3 to `jobs` (more contexts to try or to
/// benchmark) are "Job N" in project Apollo, owned by alice and bob in turn,
/// with no tasks; `jobs` is clamped to [`DEMO_JOBS_RANGE`].
pub fn seed_write(jobs: u32) -> Write {
    let mut ops: Vec<Write> = Vec::new();
    for (id, name, is_admin) in USERS {
        let email = format!("{name}@example.com");
        ops.push(Write::create("User").id(id).set("name", name).set("is_admin", is_admin).set("email", email));
    }
    ops.push(Write::create("Project").id(1).set("name", "Apollo"));
    ops.push(Write::create("ProjectMember").id(1).set("project", 1).set("user", 1));
    ops.push(Write::create("ProjectMember").id(2).set("project", 1).set("user", 2));
    let job = |id: Id, name: String, owner: Id| {
        Write::create("Job").id(id).set("name", name).set("project", 1).set("owner", owner)
    };
    ops.push(job(1, "Launch".into(), 1));
    ops.push(job(2, "Ops".into(), 2));
    let jobs = jobs.clamp(*DEMO_JOBS_RANGE.start(), *DEMO_JOBS_RANGE.end());
    for id in 3..=Id::from(jobs) {
        ops.push(job(id, format!("Job {id}"), if id % 2 == 1 { 1 } else { 2 }));
    }
    // Tasks are created as children of their job through `Job.tasks`, as clients do.
    let task = |id: Id, job: Id, name: &str, assignee: Id, created_by: Id| {
        Write::create("Task")
            .id(id)
            .under("Job", job, "tasks")
            .set("name", name)
            .set("assignee", assignee)
            .set("created_by", created_by)
    };
    ops.push(task(1, 1, "Write docs", 1, 1));
    ops.push(task(2, 1, "Fix bug", 2, 2));
    ops.push(task(3, 2, "Rotate keys", 1, 2));
    Write::batch(ops).write_id(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use statecast_core::protocol::v1::Operation;
    use statecast_core::row::fields;
    use statecast_core::store::{MemoryStore, NewId, Store, Transaction, TxOp};

    /// A memory store holding the demo rows (inserted directly, not through the engine).
    async fn seeded() -> (Arc<Schema>, MemoryStore) {
        let schema = schema();
        let store = MemoryStore::new(schema.clone());
        let mut ops = Vec::new();
        for op in seed_write(2).ops {
            let mut data = op.data.unwrap_or_default();
            if let Some(job) = op.parent_id {
                data.insert("job".into(), json!(job));
            }
            let ty = schema.entity(&op.instance_type).expect("type");
            let mut full =
                ty.fields.iter().filter_map(|f| Some((f.name.clone(), f.implicit_default()?))).collect::<Fields>();
            full.extend(data);
            let id = op.instance_id.expect("seed ops give ids");
            ops.push(TxOp::Insert { ty: op.instance_type.as_str().into(), id: NewId::Given(id), fields: full });
        }
        store.commit(Transaction { ops, ..Default::default() }).await.expect("seed commit");
        (schema, store)
    }

    fn user(id: Id) -> User {
        let (_, name, _) = USERS[usize::try_from(id - 1).expect("demo user id")];
        User::new(id, name)
    }

    async fn row(store: &MemoryStore, ty: &str, id: Id) -> Row {
        store.get(ty, id).await.expect("get").expect("row exists")
    }

    fn data(v: Value) -> Fields {
        v.as_object().cloned().expect("an object")
    }

    async fn can_save(store: &MemoryStore, who: Id, task: Id, d: Value) -> bool {
        let me = user(who);
        let cx = PolicyContext::new(store, &me);
        DemoPolicy.can_save(&cx, &row(store, "Task", task).await, &data(d)).await.expect("decides")
    }

    async fn can_create(schema: &Schema, store: &MemoryStore, who: Id, job: Id) -> bool {
        let me = user(who);
        let cx = PolicyContext::new(store, &me);
        let task = schema.entity("Task").expect("Task");
        let parent = row(store, "Job", job).await;
        DemoPolicy.can_create(&cx, task, &parent, &data(json!({"name": "New"}))).await.expect("decides")
    }

    async fn can_delete(store: &MemoryStore, who: Id, task: Id) -> bool {
        let me = user(who);
        let cx = PolicyContext::new(store, &me);
        DemoPolicy.can_delete(&cx, &row(store, "Task", task).await).await.expect("decides")
    }

    #[test]
    fn the_demo_declarations_build() {
        let schema = schema();
        let channels = channels(&schema);
        assert_eq!(channels.len(), 2);
        let job = &channels[0];
        let project = &channels[1];
        assert_eq!((project.name.as_str(), project.anchor.as_str()), ("project", "Project"));
        assert!(project.is_writable("ProjectMember", Op::Create) && project.is_writable("ProjectMember", Op::Delete));
        assert_eq!((job.name.as_str(), job.anchor.as_str()), ("job", "Job"));
        for op in [Op::Save, Op::Create, Op::Delete] {
            assert!(job.is_writable("Task", op));
            assert!(!job.is_writable("Job", op));
        }
        assert_eq!(schema.relation("Job", "tasks").map(|r| r.field.as_str()), Some("job"));
        let task = schema.entity("Task").expect("Task");
        assert!(task.field("created_by").is_some_and(|f| f.read_only));
        assert_eq!(task.field("job").map(|f| f.delete_action()), Some(OnDelete::Cascade));
        let streams = streams(&schema);
        let names: Vec<(&str, &str, Payload, &[String])> =
            streams.iter().map(|s| (s.name.as_str(), &*s.ty, s.payload, &s.index_fields[..])).collect();
        assert_eq!(
            names,
            vec![
                ("tasks", "Task", Payload::Full, &["job".to_owned()][..]),
                ("my-tasks", "Task", Payload::Id, &["assignee".to_owned()][..]),
                ("users", "User", Payload::Full, &[][..])
            ]
        );
    }

    #[tokio::test]
    async fn my_tasks_is_scoped_to_the_user() {
        let (_, store) = seeded().await;
        let bob = user(2);
        let cx = PolicyContext::new(&store, &bob);
        let client = Filters::new().eq("assignee", 1);
        let req = StreamRequest { stream: "my-tasks", ty: "Task", filters: &client, ids: &[] };
        assert!(MyTasks.has_permission(&cx, &req).await.expect("decides"));
        assert_eq!(MyTasks.scope(&cx, &req).await.expect("scope"), Filters::new().eq("assignee", 2));
    }

    #[tokio::test]
    async fn dev_tokens_name_the_four_users() {
        use statecast_core::Authenticator;
        let tokens = dev_tokens();
        for (id, name, _) in USERS {
            assert_eq!(tokens.authenticate(name).await.map(|u| u.id), Ok(id));
        }
        assert!(tokens.authenticate("mallory").await.is_err());
    }

    #[test]
    fn the_seed_is_one_batch_with_given_ids() {
        let w = seed_write(2);
        assert_eq!(w.operation, Operation::Batch);
        assert_eq!(w.ops.len(), 4 + 1 + 2 + 2 + 3);
        assert!(w.ops.iter().all(|o| o.operation == Operation::Create && o.instance_id.is_some_and(|id| id > 0)));
        let task3 = w.ops.last().expect("ops");
        assert_eq!((task3.parent_type.as_deref(), task3.parent_id), (Some("Job"), Some(2)));
        assert_eq!(task3.data.as_ref().and_then(|d| d.get("created_by")), Some(&json!(2)));
    }

    #[test]
    fn more_demo_jobs_fit_the_one_seed_batch() {
        let jobs = |w: &Write| w.ops.iter().filter(|o| o.instance_type == "Job").count();
        assert_eq!(jobs(&seed_write(5)), 5);
        let most = seed_write(*DEMO_JOBS_RANGE.end());
        assert_eq!(jobs(&most), 500);
        assert!(most.ops.len() <= statecast_core::protocol::v1::MAX_BATCH_OPS);
        assert_eq!(jobs(&seed_write(0)), 2, "clamped to the two jobs the demo tasks need");
        let job4 = most.ops.iter().find(|o| o.instance_type == "Job" && o.instance_id == Some(4)).expect("job 4");
        assert_eq!(
            job4.data.as_ref().map(|d| (d["name"].clone(), d["owner"].clone())),
            Some((json!("Job 4"), json!(2)))
        );
    }

    #[tokio::test]
    async fn members_of_the_project_and_admins_may_subscribe() {
        let (_, store) = seeded().await;
        // alice and bob are members of project 1, carol is an admin, dave neither.
        for (id, allowed) in [(1, true), (2, true), (3, true), (4, false)] {
            let me = user(id);
            let cx = PolicyContext::new(&store, &me);
            let job = DemoPolicy.has_permission(&cx, &row(&store, "Job", 1).await).await.expect("decides");
            let project = ProjectPolicy.has_permission(&cx, &row(&store, "Project", 1).await).await.expect("decides");
            assert_eq!((job, project), (allowed, allowed), "user {id}");
        }
    }

    #[tokio::test]
    async fn the_assignee_may_change_status_and_notes_only() {
        let (_, store) = seeded().await;
        assert!(can_save(&store, 1, 1, json!({"status": "doing"})).await);
        assert!(can_save(&store, 1, 1, json!({"status": "done", "notes": "shipped"})).await);
        assert!(!can_save(&store, 1, 1, json!({"name": "Renamed"})).await, "assignee renames");
        assert!(!can_save(&store, 1, 1, json!({"status": "done", "job": 2})).await, "assignee re-parents");
        assert!(!can_save(&store, 2, 1, json!({"status": "doing"})).await, "bob is not the assignee");
        assert!(!can_save(&store, 4, 1, json!({"notes": "x"})).await, "dave is not the assignee");
    }

    #[tokio::test]
    async fn an_admin_may_change_any_field() {
        let (_, store) = seeded().await;
        assert!(can_save(&store, 3, 1, json!({"name": "Renamed", "developer": 4})).await);
        assert!(can_save(&store, 3, 1, json!({"job": 2})).await);
        assert!(can_save(&store, 3, 2, json!({"status": "done"})).await);
    }

    #[tokio::test]
    async fn members_of_the_jobs_project_may_create() {
        let (schema, store) = seeded().await;
        assert!(can_create(&schema, &store, 1, 1).await);
        assert!(can_create(&schema, &store, 2, 2).await);
        assert!(!can_create(&schema, &store, 4, 1).await, "dave is not a member");
        assert!(!can_create(&schema, &store, 3, 1).await, "carol is an admin but not a member");
    }

    #[tokio::test]
    async fn only_tasks_may_be_created_under_jobs() {
        let (schema, store) = seeded().await;
        let me = user(1);
        let cx = PolicyContext::new(&store, &me);
        let job_type = schema.entity("Job").expect("Job");
        let project = row(&store, "Project", 1).await;
        assert!(!DemoPolicy.can_create(&cx, job_type, &project, &Fields::new()).await.expect("decides"));
    }

    #[tokio::test]
    async fn the_creator_or_an_admin_may_delete() {
        let (_, store) = seeded().await;
        assert!(can_delete(&store, 2, 2).await, "bob created task 2");
        assert!(can_delete(&store, 2, 3).await, "bob created task 3");
        assert!(can_delete(&store, 3, 1).await, "carol is an admin");
        assert!(!can_delete(&store, 1, 2).await, "alice did not create task 2");
        assert!(!can_delete(&store, 1, 3).await, "alice is only the assignee of task 3");
        assert!(!can_delete(&store, 4, 1).await, "dave");
    }

    #[tokio::test]
    async fn writes_to_other_types_are_denied() {
        let (_, store) = seeded().await;
        let carol = user(3);
        let cx = PolicyContext::new(&store, &carol);
        let job = row(&store, "Job", 1).await;
        assert!(!DemoPolicy.can_save(&cx, &job, &fields([("name", json!("x"))])).await.expect("decides"));
        assert!(!DemoPolicy.can_delete(&cx, &job).await.expect("decides"));
    }
}
