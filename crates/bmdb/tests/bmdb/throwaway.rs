//! The throwaway PostgreSQL itself: starts, serves, stops, leaves nothing behind.

use bmdb::throwaway::{Options, Postgres};
use sqlx::Connection;

use crate::common;

#[tokio::test]
async fn starts_serves_and_cleans_up() {
    common::init_logging();
    let pg = tokio::task::spawn_blocking(|| Postgres::start(&Options::default()))
        .await
        .unwrap()
        .unwrap();
    let dir = pg.socket_dir().to_path_buf();
    let connect = pg.create_database("smoke").await.unwrap();
    let mut conn = sqlx::PgConnection::connect_with(&connect).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
    assert!(dir.join("data").exists());

    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop().map(|()| pg)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!dir.join("data").exists(), "data directory left behind");
    pg.stop().unwrap(); // Idempotent.
    drop(pg);
    assert!(!dir.exists(), "instance directory left behind");
}
