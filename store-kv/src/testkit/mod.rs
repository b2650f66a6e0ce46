//! Tests every backend of the embedded store engine must pass, beyond the
//! store conformance suite of `statecast-core`: group commit, the fatal
//! flush, seq reservation, log trimming, close, and durability under
//! `kill -9`. A backend crate runs them all with [`crate::kv_store_tests`].

pub mod crash;
pub mod durability;

/// Expands one `#[test]` per case for the backend type given. The crash test
/// re-runs the test binary as its writer child, through the `crash_child`
/// test this expands at the root of the test file.
#[macro_export]
macro_rules! kv_store_tests {
    ($backend:ty) => {
        $crate::kv_store_tests!(@cases $backend;
            durability::concurrent_commits_share_flushes,
            durability::a_failed_flush_is_fatal,
            durability::seq_continues_above_the_reservation_after_reopen,
            durability::the_change_log_is_trimmed_to_its_capacity,
            durability::a_smaller_log_capacity_trims_the_backlog_at_the_next_commit,
            durability::a_closed_store_refuses_commits,
            durability::open_needs_a_tokio_runtime,
            crash::crash_child,
            crash::commits_reported_durable_survive_kill_9,
        );
    };
    (@cases $backend:ty; $($module:ident :: $case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testkit::$module::$case::<$backend>();
            }
        )*
    };
}
