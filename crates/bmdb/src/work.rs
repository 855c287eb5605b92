//! Work: a session's exclusive claim on a machine for one process.
//!
//! [`Session::work`] picks a machine and claims it (`work` row, unique per machine and
//! process across all sessions); the claim ends with [`Work::finish`] (success: the backoff is
//! cleared and the caller's tag writes commit atomically with the end of the work),
//! [`Work::fail`] (a backoff hides the machine from the process for a while) or
//! [`Work::cancel`]. Every step is recorded in `work_history`. Work dropped without ending is
//! cancelled in the background, best effort; if the session dies first, the work dies with it.

use std::time::Duration;

use uuid::Uuid;

use crate::backoff::{Backoff, next_interval_seconds};
use crate::model::WorkHistoryEvent;
use crate::retry::Retry;
use crate::{BoxFuture, Conn, Error, Process, Result, Session, queries};

/// Claimed work on a machine. End it with [`Work::finish`], [`Work::fail`] or [`Work::cancel`].
#[derive(Debug)]
#[must_use = "work must be finished, failed or cancelled"]
pub struct Work {
    /// The machine worked on.
    pub machine: Uuid,
    process: Process,
    session: Session,
    /// The interval of the backoff recorded before this work started, if any (expired or
    /// not): the base for the next exponential step.
    previous_backoff: Option<Duration>,
    done: bool,
}

impl Session {
    /// Claims work for `process` on the first machine `pick` returns, in one transaction with
    /// the pick. [`Error::NothingToDo`] if `pick` returns nothing, [`Error::WorkConflict`] if
    /// another session already works on that machine for that process.
    pub async fn work<F>(&self, process: Process, mut pick: F) -> Result<Work>
    where
        F: for<'c> FnMut(&'c mut Conn) -> BoxFuture<'c, Result<Vec<Uuid>>>,
    {
        let mut retry = Retry::default();
        loop {
            let result = async {
                let mut tx = self.begin_checked().await?;
                let machines = pick(&mut tx).await?;
                let Some(&machine) = machines.first() else {
                    return Err(Error::NothingToDo);
                };
                match queries::start_work(&mut tx, machine, self.id(), process).await {
                    Err(e) if e.sqlstate().as_deref() == Some("23505") => {
                        return Err(Error::WorkConflict { machine, process });
                    }
                    other => other?,
                }
                queries::work_history_insert(
                    &mut tx,
                    machine,
                    process,
                    WorkHistoryEvent::Started,
                    None,
                )
                .await?;
                let previous_backoff = queries::work_backoff_of(&mut tx, machine, process)
                    .await?
                    .first()
                    .and_then(|b| b.last_interval_seconds)
                    .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
                tx.commit().await?;
                Ok(Work {
                    machine,
                    process,
                    session: self.clone(),
                    previous_backoff,
                    done: false,
                })
            }
            .await;
            match result {
                Err(e) if retry.again(&e).await => continue,
                other => return other,
            }
        }
    }
}

impl Work {
    /// The process this work is for.
    pub fn process(&self) -> Process {
        self.process
    }

    /// Ends the work successfully: removes the claim and any backoff, records `Finished` and
    /// runs `f` (the caller's tag writes) in the same transaction.
    pub async fn finish<F>(mut self, mut f: F) -> Result<()>
    where
        F: for<'c> FnMut(&'c mut Conn) -> BoxFuture<'c, Result<()>>,
    {
        let (machine, process, session_id) = (self.machine, self.process, self.session.id());
        let mut retry = Retry::default();
        loop {
            let result = async {
                let mut tx = self.session.begin_checked().await?;
                queries::finish_work(&mut tx, machine, session_id, process).await?;
                queries::work_backoff_delete(&mut tx, machine, process).await?;
                queries::work_history_insert(
                    &mut tx,
                    machine,
                    process,
                    WorkHistoryEvent::Finished,
                    None,
                )
                .await?;
                f(&mut tx).await?;
                tx.commit().await?;
                Ok(())
            }
            .await;
            match result {
                Err(e) if retry.again(&e).await => continue,
                other => {
                    self.done = other.is_ok();
                    return other;
                }
            }
        }
    }

    /// Ends the work as failed: removes the claim, records `Failed` with `cause` and hides the
    /// machine from this process for the next backoff interval (see
    /// [`crate::backoff::next_interval_seconds`]; `None` keeps the previous interval or uses
    /// one second).
    pub async fn fail(mut self, backoff: Option<&Backoff>, cause: &str) -> Result<()> {
        let seconds = next_interval_seconds(backoff, self.previous_backoff);
        tracing::info!(
            machine = %self.machine, process = %self.process,
            "work failed ({cause}), backing off for {seconds} s"
        );
        let result = self
            .end(WorkHistoryEvent::Failed, Some(cause), Some(seconds))
            .await;
        self.done = result.is_ok();
        result
    }

    /// Ends the work without success or failure (e.g. the caller is shutting down).
    pub async fn cancel(mut self) -> Result<()> {
        let result = self.end(WorkHistoryEvent::Canceled, None, None).await;
        self.done = result.is_ok();
        result
    }

    async fn end(
        &self,
        event: WorkHistoryEvent,
        cause: Option<&str>,
        backoff_seconds: Option<i64>,
    ) -> Result<()> {
        end_work(
            &self.session,
            self.machine,
            self.process,
            event,
            cause,
            backoff_seconds,
        )
        .await
    }
}

async fn end_work(
    session: &Session,
    machine: Uuid,
    process: Process,
    event: WorkHistoryEvent,
    cause: Option<&str>,
    backoff_seconds: Option<i64>,
) -> Result<()> {
    let mut retry = Retry::default();
    loop {
        let result = async {
            let mut tx = session.begin_checked().await?;
            queries::finish_work(&mut tx, machine, session.id(), process).await?;
            queries::work_history_insert(&mut tx, machine, process, event, cause).await?;
            if let Some(seconds) = backoff_seconds {
                queries::work_backoff_insert(
                    &mut tx,
                    machine,
                    process,
                    cause.unwrap_or_default(),
                    seconds,
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        match result {
            Err(e) if retry.again(&e).await => continue,
            other => return other,
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (session, machine, process) = (self.session.clone(), self.machine, self.process);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                tracing::warn!(%machine, %process, "work dropped without ending it, cancelling");
                rt.spawn(async move {
                    if let Err(e) = end_work(
                        &session,
                        machine,
                        process,
                        WorkHistoryEvent::Canceled,
                        None,
                        None,
                    )
                    .await
                    {
                        tracing::warn!(%machine, %process, "cancelling dropped work: {e}");
                    }
                });
            }
            Err(_) => tracing::warn!(
                %machine, %process,
                "work dropped outside a runtime; it ends when its session expires"
            ),
        }
    }
}
