//! Work, its history and backoff (upstream's TestWork and TestWorkBackoff).

use std::time::Duration;

use bmdb::model::WorkHistoryEvent;
use bmdb::{Backoff, Error, Process, Provider, Session, Work, queries};
use uuid::Uuid;

use test_support::eventually;

use crate::common;

/// Work on exactly `machine`, whatever its state (the conflict tests).
async fn work_on(session: &Session, process: Process, machine: Uuid) -> Result<Work, Error> {
    session
        .work(process, move |_| Box::pin(async move { Ok(vec![machine]) }))
        .await
}

/// Work via the agent-start workflow query, which hides machines in backoff.
async fn work_agent_start(session: &Session) -> Result<Work, Error> {
    session
        .work(Process::ShepherdAgentStart, |tx| {
            Box::pin(async move {
                let ms = queries::get_machines_for_agent_start(tx, 1, Provider::Equinix).await?;
                Ok(ms.into_iter().map(|m| m.machine_id).collect())
            })
        })
        .await
}

async fn history(session: &Session, machine: Uuid) -> Vec<(WorkHistoryEvent, Option<String>)> {
    session
        .transact(move |tx| Box::pin(async move { queries::list_history_of(tx, machine).await }))
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.event, h.failed_cause))
        .collect()
}

/// The recorded interval of the machine's backoff, and how far `until` lies after the
/// failure that set it (both come from the same transaction's `now()`, so this is exact).
async fn backoff_of(session: &Session, machine: Uuid) -> Option<(i64, f64)> {
    let rows = session
        .transact(move |tx| {
            Box::pin(async move {
                queries::work_backoff_of(tx, machine, Process::ShepherdAgentStart).await
            })
        })
        .await
        .unwrap();
    let failed_at = history_times(session, machine, WorkHistoryEvent::Failed).await;
    rows.first().map(|b| {
        let after = (b.until - *failed_at.last().unwrap()).num_milliseconds() as f64 / 1000.0;
        (b.last_interval_seconds.unwrap(), after)
    })
}

async fn history_times(
    session: &Session,
    machine: Uuid,
    event: WorkHistoryEvent,
) -> Vec<chrono::DateTime<chrono::Utc>> {
    session
        .transact(move |tx| Box::pin(async move { queries::list_history_of(tx, machine).await }))
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.event == event)
        .map(|h| h.timestamp)
        .collect()
}

#[tokio::test]
async fn work_is_exclusive_per_machine_and_process() {
    let db = common::open().await;
    let s1 = db.start_session().await.unwrap();
    let s2 = db.start_session().await.unwrap();
    let machine = common::provided_machine(&s1, "1").await;

    let w1 = work_on(&s1, Process::UnitTest1, machine).await.unwrap();
    assert_eq!(w1.machine, machine);
    match work_on(&s2, Process::UnitTest1, machine).await {
        Err(Error::WorkConflict {
            machine: m,
            process,
        }) => {
            assert_eq!((m, process), (machine, Process::UnitTest1));
        }
        other => panic!("expected a work conflict, got {other:?}"),
    }
    // The same session can't take it twice either.
    assert!(matches!(
        work_on(&s1, Process::UnitTest1, machine).await,
        Err(Error::WorkConflict { .. })
    ));
    // Another process may work on the same machine.
    let w2 = work_on(&s2, Process::UnitTest2, machine).await.unwrap();
    w2.cancel().await.unwrap();

    w1.finish(|_| Box::pin(async { Ok(()) })).await.unwrap();
    let w3 = work_on(&s2, Process::UnitTest1, machine).await.unwrap();
    w3.fail(None, "boom").await.unwrap();

    assert_eq!(
        history(&s1, machine).await,
        vec![
            (WorkHistoryEvent::Started, None),
            (WorkHistoryEvent::Started, None),
            (WorkHistoryEvent::Canceled, None),
            (WorkHistoryEvent::Finished, None),
            (WorkHistoryEvent::Started, None),
            (WorkHistoryEvent::Failed, Some("boom".into())),
        ]
    );
}

#[tokio::test]
async fn concurrent_claims_have_one_winner() {
    let db = common::open().await;
    let setup = db.start_session().await.unwrap();
    let machine = common::provided_machine(&setup, "1").await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let s = db.start_session().await.unwrap();
            work_agent_start(&s).await
        }));
    }
    // Winners are kept (not dropped, which would cancel them) until every task is done.
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(w) => {
                assert_eq!(w.machine, machine);
                won.push(w);
            }
            Err(Error::WorkConflict { .. } | Error::NothingToDo) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(won.len(), 1);
    for w in won {
        w.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn nothing_to_do() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    let r = s
        .work(Process::UnitTest1, |_| Box::pin(async { Ok(vec![]) }))
        .await;
    assert!(matches!(r, Err(Error::NothingToDo)), "{r:?}");
}

#[tokio::test]
async fn finish_runs_tag_writes_atomically() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    let machine = common::provided_machine(&s, "1").await;
    let w = work_agent_start(&s).await.unwrap();
    w.finish(move |tx| {
        Box::pin(async move { queries::machine_set_agent_started(tx, machine, &[7; 32]).await })
    })
    .await
    .unwrap();
    // Agent started: no longer a candidate for agent start.
    assert!(matches!(
        work_agent_start(&s).await,
        Err(Error::NothingToDo)
    ));
}

/// Upstream's TestWorkBackoff (Initial 1 s, Exponent 2, Maximum 5 s): 1, 2, 4, 5, 5 s, then 1,
/// 2 again after a success. Instead of sleeping through 17 s of backoff, each backoff is
/// checked (interval recorded, `until` that far in the future, machine hidden) and then
/// expired by moving its `until` to now in the database. `work_hidden_while_backed_off` waits
/// for a real expiry.
#[tokio::test]
async fn work_backoff_grows_and_resets() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    let machine = common::provided_machine(&s, "1").await;
    let backoff = Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(5));

    let expire = || async {
        sqlx::query("UPDATE work_backoff SET until = now() WHERE machine_id = $1")
            .bind(machine)
            .execute(db.pool())
            .await
            .unwrap();
    };
    let fail_and_check = |want: i64| {
        let s = s.clone();
        async move {
            let w = work_agent_start(&s).await.unwrap();
            assert_eq!(w.machine, machine);
            w.fail(Some(&backoff), "test").await.unwrap();
            let (interval, after) = backoff_of(&s, machine).await.unwrap();
            assert_eq!(interval, want, "backoff interval");
            assert_eq!(after, want as f64, "until is {after} s after the failure");
            // Hidden while backed off.
            assert!(matches!(
                work_agent_start(&s).await,
                Err(Error::NothingToDo)
            ));
        }
    };

    for want in [1, 2, 4, 5, 5] {
        fail_and_check(want).await;
        expire().await;
    }
    let w = work_agent_start(&s).await.unwrap();
    w.finish(|_| Box::pin(async { Ok(()) })).await.unwrap();
    assert_eq!(backoff_of(&s, machine).await, None);
    fail_and_check(1).await;
    expire().await;
    fail_and_check(2).await;
}

#[tokio::test]
async fn work_hidden_while_backed_off() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    common::provided_machine(&s, "1").await;
    let w = work_agent_start(&s).await.unwrap();
    let failed_at = std::time::Instant::now();
    w.fail(Some(&Backoff::simple(Duration::from_secs(1))), "flaky")
        .await
        .unwrap();
    assert!(matches!(
        work_agent_start(&s).await,
        Err(Error::NothingToDo)
    ));

    let w = eventually(Duration::from_secs(5), async || {
        match work_agent_start(&s).await {
            Err(Error::NothingToDo) => Err("nothing to do: the machine is still backed off"),
            Err(e) => panic!("{e}"),
            Ok(work) => Ok(work),
        }
    })
    .await
    .expect("the backoff expires");
    let waited = failed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "visible again after {waited:?}"
    );
    w.cancel().await.unwrap();
}

#[tokio::test]
async fn dropped_work_is_cancelled() {
    let db = common::open().await;
    let s = db.start_session().await.unwrap();
    let machine = common::provided_machine(&s, "1").await;
    drop(work_on(&s, Process::UnitTest1, machine).await.unwrap());
    eventually(Duration::from_secs(5), || {
            let s = s.clone();
            async move {
                history(&s, machine).await.last().map(|h| h.0) == Some(WorkHistoryEvent::Canceled)
            }
        }).await.expect("dropped work to be cancelled");
    work_on(&s, Process::UnitTest1, machine)
        .await
        .unwrap()
        .cancel()
        .await
        .unwrap();
}

#[tokio::test]
async fn work_of_long_expired_sessions_is_released() {
    let db = common::open().await;
    let dead = db.start_session().await.unwrap();
    let machine = common::provided_machine(&dead, "1").await;
    let w = work_on(&dead, Process::UnitTest1, machine).await.unwrap();
    // The owner died long ago (its session expired two minutes back).
    sqlx::query(
        "UPDATE sessions SET session_deadline = now() - INTERVAL '2 minutes' WHERE session_id = $1",
    )
    .bind(dead.id())
    .execute(db.pool())
    .await
    .unwrap();
    std::mem::forget(w); // The dead owner never ends it.
    let s = db.start_session().await.unwrap();
    work_on(&s, Process::UnitTest1, machine)
        .await
        .unwrap()
        .cancel()
        .await
        .unwrap();
}
