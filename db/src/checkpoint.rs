//! SQLite's WAL checkpoints, moved off the commits.
//!
//! In WAL mode with `synchronous = NORMAL` a commit appends to the log without an fsync; the
//! fsyncs come with the checkpoint that copies the log back into the database file. By default
//! SQLite runs that checkpoint inside whichever commit takes the log past 1 000 pages, and
//! the request behind that commit waits for them (the slow tail of the gateway benchmark on
//! SQLite; docs/perf.md, "Tried and not kept"). Here a task of the pool's own checkpoints
//! every [`CHECKPOINT_EVERY`] instead, in `PASSIVE` mode: it waits for no reader and blocks no
//! writer, and commits keep appending while it copies. SQLite's own checkpoint stays as a
//! backstop at [`BACKSTOP_PAGES`], so the log stays bounded when writes outrun the task or no
//! task runs.
//!
//! The checkpoint's first step is an fsync of the log, and until then a commit could be lost
//! to a power cut (`synchronous = NORMAL`). With SQLite's own checkpoint alone, a database
//! that went quiet kept its last commits unsynced until 1 000 more pages came; with the task,
//! every commit is on disk within about [`CHECKPOINT_EVERY`].

use std::time::Duration;

use sqlx::AnyPool;

/// How often the log is copied back; a quiet log costs one statement and no I/O.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// SQLite's automatic checkpoint, kept far behind the task's (40 MB at 4 KiB pages).
pub(crate) const BACKSTOP_PAGES: u32 = 10_000;

/// The task; stopped when the last handle to the database is dropped.
#[derive(Debug)]
pub(crate) struct Checkpointer(tokio::task::JoinHandle<()>);

impl Checkpointer {
    /// Starts checkpointing `pool` every `every` until the pool closes.
    pub(crate) fn start(pool: AnyPool, every: Duration) -> Checkpointer {
        Checkpointer(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Said once when checkpoints start failing and once when they work again, not
            // four times a second in between.
            let mut failing = false;
            loop {
                ticks.tick().await;
                if pool.is_closed() {
                    return;
                }
                match checkpoint(&pool).await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("SQLite WAL checkpoints work again");
                    }
                    Ok(()) => {}
                    Err(_) if pool.is_closed() => return,
                    Err(e) => {
                        // The backstop still bounds the log; the next tick tries again.
                        if !failing {
                            tracing::warn!(error = %e, "SQLite WAL checkpoint failed");
                        }
                        failing = true;
                    }
                }
            }
        }))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies what the log holds back into the database file, as far as no reader still needs it.
async fn checkpoint(pool: &AnyPool) -> Result<(), sqlx::Error> {
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(pool)
        .await
        .map(drop)
}
