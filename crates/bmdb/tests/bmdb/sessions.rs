//! Sessions: liveness, expiry, keepalive, transaction retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bmdb::{Error, SessionConfig, SessionKeeper, queries};
use chrono::{DateTime, Utc};

use test_support::eventually;

use crate::common;

fn no_keepalive(interval: Duration) -> SessionConfig {
    SessionConfig {
        interval,
        poke_every: None,
        retry_delay: Duration::from_millis(100),
    }
}

async fn deadline_of(db: &bmdb::Bmdb, session: &bmdb::Session) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT session_deadline FROM sessions WHERE session_id = $1")
        .bind(session.id())
        .fetch_one(db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn new_session_has_upstream_timing() {
    let db = common::open().await;
    let session = db.start_session().await.unwrap();
    let (interval, left): (i64, f64) = sqlx::query_as(
        "SELECT session_interval_seconds, \
                EXTRACT(EPOCH FROM session_deadline - now())::FLOAT8 \
         FROM sessions WHERE session_id = $1",
    )
    .bind(session.id())
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(interval, 5);
    assert!(left > 4.0 && left <= 5.0, "deadline {left} s away");
    // And transactions run in it.
    common::provided_machine(&session, "1").await;
}

#[tokio::test]
async fn expired_session_is_refused_forever() {
    let db = common::open().await;
    let session = db
        .start_session_with(no_keepalive(Duration::from_secs(1)))
        .await
        .unwrap();
    common::provided_machine(&session, "1").await;

    let started = std::time::Instant::now();
    eventually(Duration::from_secs(10), || async {
        matches!(
            session
                .transact(|tx| Box::pin(async move { queries::new_machine(tx).await }))
                .await,
            Err(Error::SessionExpired)
        )
    })
    .await
    .expect("session to expire");
    // Not before its deadline (the session was created just before `started`).
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(session.is_expired());

    // Even if someone pushed the deadline back, an abandoned session stays abandoned.
    sqlx::query(
        "UPDATE sessions SET session_deadline = now() + INTERVAL '1 hour' WHERE session_id = $1",
    )
    .bind(session.id())
    .execute(db.pool())
    .await
    .unwrap();
    let r = session
        .transact(|tx| Box::pin(async move { queries::new_machine(tx).await }))
        .await;
    assert!(matches!(r, Err(Error::SessionExpired)), "{r:?}");
}

#[tokio::test]
async fn keepalive_outlives_the_interval() {
    let db = common::open().await;
    let session = db
        .start_session_with(SessionConfig::with_interval(Duration::from_secs(2)))
        .await
        .unwrap();
    let first_deadline = deadline_of(&db, &session).await;
    // Wait (on the database clock) until the original deadline is over.
    eventually(Duration::from_secs(5), || async {
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(db.pool())
            .await
            .unwrap();
        now > first_deadline
    })
    .await
    .expect("original deadline to pass");
    assert!(deadline_of(&db, &session).await > first_deadline);
    assert!(!session.is_expired());
    common::provided_machine(&session, "still-alive").await;
}

#[tokio::test]
async fn keepalive_abandons_a_session_found_expired() {
    let db = common::open().await;
    let session = db
        .start_session_with(SessionConfig::with_interval(Duration::from_secs(2)))
        .await
        .unwrap();
    // Someone (e.g. an operator, or clock trouble) expired us in the database.
    sqlx::query(
        "UPDATE sessions SET session_deadline = now() - INTERVAL '1 second' WHERE session_id = $1",
    )
    .bind(session.id())
    .execute(db.pool())
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), session.expired())
        .await
        .expect("keepalive did not notice the expiry");
    assert!(session.is_expired());
}

#[tokio::test]
async fn transact_retries_serialization_failures() {
    let db = common::open().await;
    let session = db.start_session().await.unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let machine = session
        .transact(move |tx| {
            let a = a.clone();
            Box::pin(async move {
                let m = queries::new_machine(tx).await?;
                if a.fetch_add(1, Ordering::SeqCst) == 0 {
                    // What PostgreSQL raises when SERIALIZABLE loses a conflict (test-only,
                    // PL/pgSQL; CockroachDB reports its restarts with the same code).
                    sqlx::query(
                        "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
                    )
                    .execute(&mut *tx)
                    .await?;
                }
                Ok(m.machine_id)
            })
        })
        .await
        .unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    // Exactly one machine exists: the first attempt was rolled back.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM machines")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 1);
    let only: uuid::Uuid = sqlx::query_scalar("SELECT machine_id FROM machines")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(only, machine);
}

#[tokio::test]
async fn transact_does_not_retry_other_errors_and_rolls_back() {
    let db = common::open().await;
    let session = db.start_session().await.unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let r: Result<(), Error> = session
        .transact(move |tx| {
            let a = a.clone();
            Box::pin(async move {
                a.fetch_add(1, Ordering::SeqCst);
                queries::new_machine(tx).await?;
                Err(Error::Aborted("caller changed its mind".into()))
            })
        })
        .await;
    assert!(matches!(r, Err(Error::Aborted(_))), "{r:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM machines")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn keeper_replaces_expired_sessions() {
    let db = common::open().await;
    let keeper = SessionKeeper::new(db.clone());
    let first = keeper.get().await.unwrap();
    assert_eq!(keeper.get().await.unwrap().id(), first.id());
    sqlx::query(
        "UPDATE sessions SET session_deadline = now() - INTERVAL '1 second' WHERE session_id = $1",
    )
    .bind(first.id())
    .execute(db.pool())
    .await
    .unwrap();
    // The next transaction finds out, and the keeper hands out a fresh session after that.
    let r = first
        .transact(|tx| Box::pin(async move { queries::new_machine(tx).await }))
        .await;
    assert!(matches!(r, Err(Error::SessionExpired)), "{r:?}");
    let second = keeper.get().await.unwrap();
    assert_ne!(second.id(), first.id());
    common::provided_machine(&second, "x").await;
}
