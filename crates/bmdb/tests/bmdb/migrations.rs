//! Schema migrations: up, up again, down and up, and the data-preserving step of
//! 1681826233_exponential_backoff.

use bmdb::connection::migrator;
use sqlx::Row;

use crate::common;

#[tokio::test]
async fn up_twice_is_a_no_op() {
    let db = common::open().await;
    // `open` migrated already; a second run must find nothing to do.
    db.migrate().await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        migrator()
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .count()
    );
}

#[tokio::test]
async fn down_to_nothing_and_up_again() {
    let db = common::open().await;
    migrator().undo(db.pool(), 0).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' \
         AND table_name <> '_sqlx_migrations'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(tables, 0, "down migrations left tables behind");
    db.migrate().await.unwrap();
    // The schema is usable again.
    let session = db.start_session().await.unwrap();
    common::provided_machine(&session, "after-reapply").await;
}

#[tokio::test]
async fn exponential_backoff_migration_keeps_rows() {
    common::init_logging();
    let connect = bmdb::throwaway::fresh_database().await.unwrap();
    let pool = sqlx::PgPool::connect_with(connect).await.unwrap();
    // Up to the migration before 1681826233, then write a backoff row the old way.
    migrator().run_to(1672749980, &pool).await.unwrap();
    let machine: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO machines (machine_created_at) VALUES (now()) RETURNING machine_id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO work_backoff (machine_id, process, until, cause) \
         VALUES ($1, 'ShepherdAccess', now() + INTERVAL '1 hour', 'old cause')",
    )
    .bind(machine)
    .execute(&pool)
    .await
    .unwrap();

    migrator().run(&pool).await.unwrap();
    let row =
        sqlx::query("SELECT cause, last_interval_seconds FROM work_backoff WHERE machine_id = $1")
            .bind(machine)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row.get::<String, _>("cause"), "old cause");
    assert_eq!(row.get::<Option<i64>, _>("last_interval_seconds"), None);
}
